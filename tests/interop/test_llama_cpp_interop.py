"""Interop: the GGUF files lmsurgeon writes, loaded and run by llama.cpp itself (llama-cpp-python).

Every GGUF the tool writes is loaded by llama.cpp: each fixture model (llama, qwen2, qwen3, and
phi3 with its fused attn_qkv and ffn_up), a Mistral of random weights (there is no Mistral
fixture), a Llama of random weights with Llama 3.1's rope scaling (written as llama.cpp's
rope_freqs.weight), qwen3-tiny's weights with YaRN rope scaling (llama.cpp's rope.scaling keys;
transformers' logits of the same weights with the default rope differ by 0.77 of max|logit|), the
teacher, and the teacher pruned on hidden size and heads (so that the head dimension is no longer
hidden / heads). Through llama.cpp's C API (llama_decode with a
logit at every position, llama_get_logits), against transformers (fp32, eager attention, the same
weights read from the Hugging Face checkpoint):
  - F32 files give transformers' logits within 1e-4 of the largest |logit| (measured: <= 1.3e-6;
    phi3-tiny 5.2e-7, the YaRN Qwen3 1.3e-6);
  - Q8_0 files: the mean KL(transformers || llama.cpp) per position stays below KL_BOUND_Q8_0,
    and llama.cpp's top-1 token is transformers' at >= 99% of the positions of the teacher on
    held-out text. The random-weight fixtures and the teacher pruned without calibration have
    near-flat logits (median top-1/top-2 gap about 5% of max|logit|, the size of Q8_0's logit
    error), so their top-1 agreement measures quantisation noise (measured 94-98%): for them the
    KL bound is the check, with a floor of 90% top-1 against gross errors;
  - llama.cpp's tokenizer (llama_tokenize, a BOS only where the file asks for one, special tokens
    parsed) gives the ids of every golden case of fixtures/tokenizer/encode_cases.jsonl (the
    teacher's tokenizer). llama.cpp does not apply a tokenizer.json normalizer, so each text is
    given to it NFC-normalised, as the tokenizer's NFC normalizer hands it to the model.
"""
import json
import os
import subprocess
import unicodedata
from pathlib import Path

import llama_cpp
import numpy as np
import pytest
import torch
from llama_cpp._logger import set_verbose
from transformers import AutoModelForCausalLM

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
torch.set_num_threads(2)
set_verbose(False)  # llama.cpp's errors only

# Fixture models with a GGUF mapping (phi3-tiny: llama.cpp's fused attn_qkv and ffn_up), the
# teacher, "pruned" (the teacher pruned on hidden size and heads), "mistral" (random weights: no
# Mistral fixture), "llama3-rope" (random weights, llama3 rope scaling) and "qwen3-yarn"
# (qwen3-tiny's weights with YaRN rope scaling).
FIXTURES = ["models/llama-tiny", "models/qwen2-tiny", "models/qwen3-tiny", "models/phi3-tiny",
            "teacher"]
MODELS = FIXTURES + ["pruned", "mistral", "llama3-rope", "qwen3-yarn"]
F32_REL_TOL = 1e-4
# Measured mean KL per position of the Q8_0 files: phi3-tiny 3.9e-5, the YaRN Qwen3 1.9e-4,
# llama-tiny 1.5e-4, qwen2-tiny 1.1e-4,
# qwen3-tiny 1.8e-4, teacher 3.4e-4, pruned teacher 1.2e-3.
KL_BOUND_Q8_0 = 3e-3
TOP1_TRAINED = 0.99  # the teacher (measured 99.2% of 512 positions)
TOP1_NEAR_FLAT = 0.90  # the others (measured 94.1% (YaRN Qwen3) to 98.4%)


def run(*args):
    proc = subprocess.run([LMS, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("llama_cpp")


def random_model(workdir, name, cfg, seed):
    """workdir/name: an F32 model of random weights for config cfg (lmsurgeon init, no
    tokenizer), its weights large enough (std 0.08) that the logits are not flat."""
    (workdir / f"{name}-config.json").write_text(json.dumps(cfg))
    out = workdir / name
    run("init", out, "--config", workdir / f"{name}-config.json", "--dtype", "f32",
        "--no-tokenizer", "--initializer-range", 0.08, "--seed", seed, "--quiet")
    return out


def make_mistral(workdir):
    """A small Mistral of random weights (lmsurgeon init; transformers reads the same files):
    llama-tiny's shape, untied, with a sliding window longer than the context."""
    cfg = json.loads((FIX / "models/llama-tiny/config.json").read_text())
    for k in ("attention_bias", "mlp_bias", "pretraining_tp"):
        cfg.pop(k)
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral", sliding_window=4096,
               tie_word_embeddings=False)
    return random_model(workdir, "mistral", cfg, seed=7)


def make_llama3_rope(workdir):
    """A small Llama of random weights with Llama 3.1's rope scaling (lmsurgeon init): head
    dimension 16 and theta 10000 put the 8 rotary wavelengths (6.3 to 6.3e3 positions) in all
    three bands of original_max_position_embeddings 32 (below 32 / 4: kept; between: smoothed;
    above 32: divided by the factor), and the 64 positions each prompt runs reach past 32."""
    cfg = json.loads((FIX / "models/llama-tiny/config.json").read_text())
    cfg.update(num_attention_heads=4, head_dim=16, tie_word_embeddings=False,
               rope_parameters={"rope_theta": 10000.0, "rope_type": "llama3", "factor": 8.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 32})
    return random_model(workdir, "llama3-rope", cfg, seed=11)


def make_qwen3_yarn(workdir):
    """qwen3-tiny's weights with YaRN rope scaling (factor 4 over an original context of 32,
    max_position_embeddings 4 x 32, as Qwen3's model cards set it), so that its 16 rotary
    frequencies fall on both sides of the correction range and the 64-position prompts reach past
    the original context. transformers applies YaRN at every length (its attention factor
    1 + 0.1 ln 4 scales cos and sin from position 0)."""
    out = workdir / "qwen3-yarn"
    out.mkdir()
    src = FIX / "models/qwen3-tiny"
    cfg = json.loads((src / "config.json").read_text())
    cfg["max_position_embeddings"] = 128
    cfg["rope_parameters"] = {"rope_theta": 1000000.0, "rope_type": "yarn", "factor": 4.0,
                              "original_max_position_embeddings": 32}
    (out / "config.json").write_text(json.dumps(cfg))
    (out / "model.safetensors").symlink_to(src / "model.safetensors")
    return out


@pytest.fixture(scope="module")
def hf_dirs(workdir):
    """Each model's Hugging Face directory; the teacher pruned to hidden 224 and 6 of 8 heads
    (head_dim 32 != 224 / 6) and the Mistral are made once."""
    pruned = workdir / "teacher-224-6"
    run("prune", FIX / "teacher", pruned, "--target-hidden-size", 224,
        "--target-num-attention-heads", 6, "--quiet")
    cfg = json.loads((pruned / "config.json").read_text())
    assert cfg["hidden_size"] / cfg["num_attention_heads"] != cfg["head_dim"]
    dirs = {rel: FIX / rel for rel in FIXTURES}
    dirs.update(pruned=pruned, mistral=make_mistral(workdir))
    dirs["llama3-rope"] = make_llama3_rope(workdir)
    dirs["qwen3-yarn"] = make_qwen3_yarn(workdir)
    return dirs


def prompts(rel, hf_dir):
    """The sequences of 64 ids each model runs: held-out text (the first ids of the documents'
    4096-id blocks) for the teacher's vocabulary, 8 sequences for the teacher (512 positions for
    its top-1 rate), 4 for the pruned teacher; 4 of seeded random ids for the small fixtures
    (whose weights are random too)."""
    cfg = json.loads((Path(hf_dir) / "config.json").read_text())
    n = 8 if rel == "teacher" else 4
    if cfg["vocab_size"] == 4096:
        ids = np.fromfile(FIX / "corpus" / "val.ids.u16", dtype="<u2", count=n * 4096)
        return np.stack([ids[i * 4096:i * 4096 + 64] for i in range(n)]).astype(np.int64)
    return np.random.default_rng(20261206).integers(0, cfg["vocab_size"], (n, 64))


_reference = {}


def reference_logits(rel, hf_dir):
    """transformers' fp32 logits at every position of prompts(), computed once per model."""
    if rel not in _reference:
        model = AutoModelForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32,
                                                     attn_implementation="eager")
        model.eval()
        with torch.no_grad():
            ids = torch.tensor(prompts(rel, hf_dir))
            _reference[rel] = model(ids).logits.double().numpy()
    return _reference[rel]


class LlamaCppModel:
    """A GGUF loaded by llama.cpp on the CPU. The KV cache is fp32 (llama.cpp's default is f16)
    so that an F32 file is computed in fp32 end to end."""

    def __init__(self, path):
        llama_cpp.llama_backend_init()
        self.model = llama_cpp.llama_model_load_from_file(str(path).encode(),
                                                          llama_cpp.llama_model_default_params())
        assert self.model, f"llama.cpp rejected {path} (its error is printed above)"
        self.vocab = llama_cpp.llama_model_get_vocab(self.model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        llama_cpp.llama_model_free(self.model)

    def _context(self, n):
        cp = llama_cpp.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = n
        cp.n_threads = cp.n_threads_batch = 2
        cp.type_k = cp.type_v = llama_cpp.GGML_TYPE_F32
        cp.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        ctx = llama_cpp.llama_init_from_model(self.model, cp)
        assert ctx, "llama.cpp could not make a context"
        return ctx

    def logits(self, ids):
        """The logits at every position of one sequence, decoded as one batch in a fresh
        context."""
        n = len(ids)
        ctx = self._context(n)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            for i, t in enumerate(ids):
                batch.token[i] = int(t)
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = True
            batch.n_tokens = n
            assert llama_cpp.llama_decode(ctx, batch) == 0
            out = llama_cpp.llama_get_logits(ctx)
            return np.ctypeslib.as_array(out, shape=(n, self.n_vocab)).astype(np.float64)
        finally:
            llama_cpp.llama_batch_free(batch)
            llama_cpp.llama_free(ctx)

    def tokenize(self, text):
        data = text.encode("utf-8")
        cap = len(data) + 8
        buf = (llama_cpp.llama_token * cap)()
        # add_special: a BOS (or EOS) only where the file says so; parse_special: special
        # tokens in the text are tokens, as Hugging Face tokenizers reads them
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), buf, cap, True, True)
        assert n >= 0, f"llama_tokenize needs {-n} slots"
        return list(buf[:n])


def llama_cpp_logits(hf_dir, dtype, path, seqs):
    run("convert", hf_dir, path, "--to", "gguf", "--dtype", dtype, "--quiet")
    with LlamaCppModel(path) as m:
        assert m.n_vocab == json.loads((Path(hf_dir) / "config.json").read_text())["vocab_size"]
        return np.stack([m.logits(s) for s in seqs])


def log_softmax(x):
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


@pytest.mark.parametrize("rel", MODELS)
def test_f32_logits_match_transformers(rel, hf_dirs, tmp_path):
    # two sequences are enough for an fp32 comparison
    want = reference_logits(rel, hf_dirs[rel])[:2]
    got = llama_cpp_logits(hf_dirs[rel], "f32", tmp_path / "m.gguf", prompts(rel, hf_dirs[rel])[:2])
    assert got.shape == want.shape
    rel_err = np.abs(got - want).max() / np.abs(want).max()
    print(f"{rel}: F32 max |llama.cpp - transformers| / max|logit| = {rel_err:.3g}")
    assert rel_err < F32_REL_TOL


@pytest.mark.parametrize("rel", MODELS)
def test_q8_0_top1_and_kl(rel, hf_dirs, tmp_path):
    want = reference_logits(rel, hf_dirs[rel])
    got = llama_cpp_logits(hf_dirs[rel], "q8_0", tmp_path / "m.gguf", prompts(rel, hf_dirs[rel]))
    assert got.shape == want.shape
    top1 = (want.argmax(-1) == got.argmax(-1)).mean()
    lp, lq = log_softmax(want), log_softmax(got)
    kl = (np.exp(lp) * (lp - lq)).sum(-1).mean()
    print(f"{rel}: Q8_0 top-1 agreement {top1:.4f} of {lp.shape[0] * lp.shape[1]}, mean KL {kl:.3g}")
    assert kl < KL_BOUND_Q8_0
    assert top1 >= (TOP1_TRAINED if rel == "teacher" else TOP1_NEAR_FLAT)


def test_yarn_changes_the_logits(hf_dirs):
    """The YaRN comparison is not vacuous: on the same prompts, transformers' logits of the same
    weights with the default rope are far from the YaRN ones (measured 0.77 of max|logit|)."""
    plain = reference_logits("models/qwen3-tiny", hf_dirs["models/qwen3-tiny"])
    yarn = reference_logits("qwen3-yarn", hf_dirs["qwen3-yarn"])
    assert np.abs(plain - yarn).max() / np.abs(yarn).max() > 0.3


def test_tokenizer_matches_golden_cases(tmp_path):
    """llama.cpp's tokenizer, read from the teacher's GGUF (tokenizer.ggml.*), encodes every
    golden case as Hugging Face tokenizers did."""
    tok = json.loads((FIX / "teacher" / "tokenizer.json").read_text())
    assert tok["normalizer"] == {"type": "NFC"}
    cases = [json.loads(line) for line in
             (FIX / "tokenizer" / "encode_cases.jsonl").read_text().splitlines()]
    run("convert", FIX / "teacher", tmp_path / "t.gguf", "--to", "gguf", "--dtype", "q8_0",
        "--quiet")
    with LlamaCppModel(tmp_path / "t.gguf") as m:
        got = [m.tokenize(unicodedata.normalize("NFC", c["text"])) for c in cases]
    bad = [(c["text"], c["ids"], g) for c, g in zip(cases, got) if g != c["ids"]]
    assert not bad, bad
