"""The simulator's output pinned: digests of every value of small cases (metrics, spans, logs, case.json).

The digests were taken with the simulator as it was before its speed-up of issue 17 (commit 87fa0bd), so a change
that alters a single bit of a simulated case fails here; a deliberate change of the model updates them (run this
file's ``_digests`` and paste). They hash the values (column names, dtypes, float bits, texts), not the parquet
files, so they do not depend on the pyarrow version that writes them (``test_sim_physics.test_same_seed_same_bytes``
checks the files' bytes within one environment). A numpy release that changed one of its generators' streams
would change them too (NumPy does not promise stable streams across versions); taken with numpy 2.2.6.

The metrics' digest also depends on the machine: the same code (87fa0bd, and every commit since) gives one digest
on the machines the pins were first taken on and another on an AMD EPYC one (AVX2, no AVX-512), with the
same numpy, and with pandas 3.0.6–3.1.2 and scipy 1.13–1.17 alike; its traces, logs and case.json agree bit for
bit, and numpy's own dispatch (``NPY_DISABLE_CPU_FEATURES``) and OpenBLAS's kernel choice (``OPENBLAS_CORETYPE``)
do not move it (most likely the system maths library's per-CPU code for the transcendental functions the metrics
apply). Both digests were taken from 87fa0bd's code, so either one means "unchanged".
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from llmrca.faults import Injection
from llmrca.io.native import case_to_json
from llmrca.sim.config import SimConfig
from llmrca.sim.run import simulate

_SHORT = {"duration": 120.0, "inject_at": 60.0, "fault_duration": 30.0}


def _frame_digest(df: pd.DataFrame) -> str:
    h = hashlib.sha256()
    for c in df.columns:
        s = df[c]
        h.update(f"{c}\0{s.dtype}\0".encode())
        if pd.api.types.is_string_dtype(s.dtype) or s.dtype == object:
            h.update("\x1f".join("\0" if v is None or v is pd.NA else str(v) for v in s.tolist()).encode())
        else:
            na = s.isna().to_numpy()
            if s.dtype.kind in "iub":  # integers (nullable ones with a 0 where missing; the mask says where)
                v = s.to_numpy(dtype=np.int64, na_value=0)
            else:
                v = s.to_numpy(dtype=float, na_value=np.nan)
            h.update(np.ascontiguousarray(v).tobytes() + np.packbits(na).tobytes())
    return h.hexdigest()[:20]


def _digests(case) -> dict[str, str]:
    obs = case.observation
    meta = case_to_json(case)
    meta.get("provenance", {}).pop("version", None)  # the package version, not the simulation
    return {
        "metrics": _frame_digest(obs.metrics),
        "traces": _frame_digest(obs.traces),
        "logs": _frame_digest(obs.logs),
        "case": hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()[:20],
    }


CASES = {
    "cpu": (SimConfig(**_SHORT), Injection("cpu", "ray-replicas-1"), 11),
    "kill+delay": (SimConfig(**_SHORT), [Injection("replica-kill", "ray-replicas-2"),
                                         Injection("network", "ray-replicas-0")], 5),
    "normal": (SimConfig(**_SHORT), None, 3),
}

EXPECTED = {  # taken at commit 87fa0bd (before the speed-up); the same after it
    "cpu": {"traces": "955dba04530e93a15fa9", "logs": "07eb4b0fe59b72aef9fb", "case": "57db3fd56144d7d4a543"},
    "kill+delay": {"traces": "8765f278fc346e3c95cb", "logs": "7a7213093d330c587342", "case": "f99833a6dbe5fe21eeb5"},
    "normal": {"traces": "98ccf4763bddc76c40bb", "logs": "2df586c53a4255be83c2", "case": "6c584e0bfb4b88593c71"},
}
METRICS = {  # per case: (first machines, AMD EPYC AVX2), both from 87fa0bd's code (see the module docs)
    "cpu": ("3c7f277622415b96b613", "77e43c4b904cf3e959b2"),
    "kill+delay": ("af552b38f206c576531c", "1256e1b0f3a7bfca8117"),
    "normal": ("f3e0fda6ca280525436c", "5fb9821eda8757e322cc"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_simulated_case_is_the_same_to_the_bit(name):
    cfg, fault, seed = CASES[name]
    got = _digests(simulate(cfg, fault, seed))
    assert got.pop("metrics") in METRICS[name]
    assert got == EXPECTED[name]


# ---- the text helpers the speed-up uses give what they replace ------------------------------------------------

@pytest.mark.parametrize("fmt", ["", "plain", "{} and {}", "{:.3f}|{:>7}|{!r}|{:03d}", "{1}-{0}-{1}", "{{x}} {} }}{{",
                                 "a 'quoted' \"text\" \\ {} {:,}"])
def test_compiled_formats_print_what_str_format_prints(fmt):
    from llmrca.sim.strings import compiled

    args = (3.14159, 42, "x'y", 7, 1234567)
    assert compiled(fmt)(*args) == fmt.format(*args)


def test_compiled_leaves_named_fields_to_str_format():
    from llmrca.sim.strings import compiled

    assert compiled("{a} {}").__name__ == "format"


def test_bake_writes_constants_in_and_takes_the_values():
    from llmrca.sim.strings import bake, const, value

    fmt = "{} [{}] {} {}"
    f = bake(fmt, [const("{odd}"), value(".2f"), value(before='"', after='"'), const("-")])
    assert f(1.005, "id") == fmt.format("{odd}", f"{1.005:.2f}", '"id"', "-")
    with pytest.raises(ValueError, match="fields"):
        bake(fmt, [const("a")])


def test_string_array_is_pandas_string_array():
    from llmrca.sim.strings import string_array

    values = np.array(["a", None, "ü", ""], dtype=object)
    got, want = string_array(values), pd.array(values, dtype="string")
    assert got.dtype == want.dtype
    assert got.equals(want)
    assert string_array([1, "b"]).tolist() == pd.array([1, "b"], dtype="string").tolist()


def test_string_take_is_string_array_of_the_taken_texts():
    from llmrca.sim.strings import Pieces, string_array, string_take

    texts = np.array(["a", None, "ü", "", "bb"], dtype=object)
    codes = np.array([4, 0, 0, 2, 1, 3, 4])
    null = np.array([False, False, True, False, False, False, True])
    want = string_array(texts[codes])
    got = string_take(texts, codes)
    assert got.dtype == want.dtype and got.equals(want)
    masked = texts[codes].copy()
    masked[null] = None
    assert string_take(list(texts), codes, null=null).equals(string_array(masked))
    assert string_take(texts, np.zeros(0, dtype=np.int64)).equals(string_array(np.zeros(0, dtype=object)))
    hexed = "0123456789abcdef" * 3 + "ffffffffffffffff"
    ids = Pieces(hexed, 16)
    assert ids.texts() == [hexed[i:i + 16] for i in range(0, 64, 16)]
    assert ids.texts(1, 2) == [hexed[16:32], hexed[48:64]]
    assert string_take(ids, codes[:5] % 4).equals(string_array(np.array(ids.texts(), dtype=object)[codes[:5] % 4]))
    with pytest.raises(ValueError):
        Pieces("abc", 2)


def test_inferred_take_is_what_a_frame_makes_of_the_object_array():
    from llmrca.sim.strings import Pieces, inferred_take

    texts = ["OK", "ERROR", ""]
    codes = np.array([0, 2, 1, 1, 0])
    want = pd.DataFrame({"x": np.asarray(texts, dtype=object)[codes]})
    got = pd.DataFrame({"x": inferred_take(texts, codes)})
    assert got["x"].dtype == want["x"].dtype and got.equals(want)
    empty = pd.DataFrame({"x": inferred_take(texts, codes[:0])})
    assert empty["x"].dtype == pd.DataFrame({"x": np.empty(0, dtype=object)})["x"].dtype
    ids = Pieces("ab" * 8, 4)
    assert pd.DataFrame({"x": inferred_take(ids, codes[:3])}).equals(
        pd.DataFrame({"x": np.asarray(ids.texts(), dtype=object)[codes[:3]]}))


def test_uuid_and_request_id_texts_are_what_python_prints():
    import uuid

    from llmrca.sim.traces import _hex_digits, _row_texts, _uuid4_texts, hex_ids

    got = _uuid4_texts(np.random.default_rng(5), 300)
    raw = np.frombuffer(np.random.default_rng(5).bytes(16 * 300), dtype=np.uint8).reshape(300, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    assert got == [str(uuid.UUID(bytes=r.tobytes())) for r in raw]
    assert all(uuid.UUID(x).version == 4 for x in got)
    digits = _hex_digits(np.frombuffer(np.random.default_rng(6).bytes(16 * 40), dtype=np.uint8).reshape(40, 16))
    assert _row_texts(digits) == hex_ids(np.random.default_rng(6), 40, 16)
    assert _uuid4_texts(np.random.default_rng(5), 0) == []
