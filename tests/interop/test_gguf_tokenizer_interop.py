"""Interop: the tokenizer rebuilt from tokenizer.ggml.* when a GGUF comes from another tool.

The teacher (a byte-level BPE tokenizer in Qwen2's layout) is converted to GGUF by lmsurgeon and
rewritten with llama.cpp's own gguf-py without any lmsurgeon.* key, as llama.cpp's converter
would have left it (a chat template added, as the converter copies it from tokenizer_config.json).
`lmsurgeon convert --to hf` of that file must give a tokenizer.json / tokenizer_config.json that
`tokenizers` and `transformers` load and that encode exactly as the fixture's own tokenizer: the
golden encodings of fixtures/tokenizer/encode_cases.jsonl, lines of the held-out corpus, special
tokens, the special-token settings and the chat template.
For each pre-tokenizer name that is rebuilt (qwen2, llama-bpe, gpt-2, default), the rebuilt
tokenizer must also split and merge as llama.cpp itself does on that file (llama-cpp-python,
vocab only), with and without an added bos token. An unknown pre-tokenizer or a SentencePiece
("llama") tokenizer converts with one warning line and no tokenizer files.
"""
import json
import os
import subprocess
import unicodedata
from pathlib import Path

import gguf
import numpy as np
import pytest
import tokenizers
import transformers

LMS = os.environ["LMSURGEON"]
FIX = Path(os.environ["LMS_FIXTURES"])
TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
            "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CHAT = [{"role": "user", "content": "def f(x):\n    return x"}]


def run(*args):
    proc = subprocess.run([LMS, *map(str, args)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc


def corpus_lines(n=300):
    """The first n non-empty lines of the held-out documents, plus a few whole documents."""
    lines, docs = [], []
    with open(FIX / "corpus/val.jsonl", encoding="utf-8") as f:
        for row in f:
            text = json.loads(row)["text"]
            if len(docs) < 3:
                docs.append(text[:4000])
            lines += [ln for ln in text.split("\n") if ln.strip()]
            if len(lines) >= n:
                break
    return lines[:n] + docs


SPECIAL_TEXTS = ["<|im_start|>user\nhello<|im_end|>\n", "a<|endoftext|>b", "<|im_end|><|im_end|>",
                 "Don't WE'LL it's 12345678 x=1;  \t\r\n  ", "héllo wörld ñ 日本語 😀"]


def rewrite(src, dst, edits):
    """src's GGUF written again by gguf-py without lmsurgeon.* keys; edits maps a key to
    (value, type, sub type) or to None (key dropped)."""
    r = gguf.GGUFReader(str(src))
    arch = r.get_field("general.architecture").contents()
    w = gguf.GGUFWriter(str(dst), arch)
    for key, f in r.fields.items():
        if key.startswith(("GGUF.", "lmsurgeon.")) or key in ("general.architecture",) or key in edits:
            continue
        sub = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(key, f.contents(), f.types[0], sub_type=sub)
    for key, v in edits.items():
        if v is not None:
            w.add_key_value(key, *v)
    for t in r.tensors:
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


S = gguf.GGUFValueType.STRING


@pytest.fixture(scope="module")
def teacher_gguf(tmp_path_factory):
    d = tmp_path_factory.mktemp("gguftok")
    run("convert", FIX / "teacher", "--to", "gguf", "--dtype", "f32", d / "ours.gguf")
    return d, d / "ours.gguf"


def foreign(teacher_gguf, name, edits):
    d, ours = teacher_gguf
    path = d / f"{name}.gguf"
    rewrite(ours, path, {"tokenizer.chat_template": (TEMPLATE, S), **edits})
    return path


def to_hf(path):
    out = path.with_suffix(".hf")
    proc = run("convert", path, "--to", "hf", out)
    return out, proc


def test_foreign_file_has_no_lmsurgeon_keys(teacher_gguf):
    path = foreign(teacher_gguf, "plain", {})
    keys = gguf.GGUFReader(str(path)).fields.keys()
    assert not [k for k in keys if k.startswith("lmsurgeon.")]
    assert "tokenizer.ggml.tokens" in keys and "tokenizer.ggml.merges" in keys


def test_rebuilt_tokenizer_encodes_as_the_original(teacher_gguf):
    out, proc = to_hf(foreign(teacher_gguf, "qwen2", {}))
    assert "warning" not in proc.stderr
    ref = tokenizers.Tokenizer.from_file(str(FIX / "tokenizer/tokenizer.json"))
    got = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert got.get_vocab(with_added_tokens=True) == ref.get_vocab(with_added_tokens=True)
    with open(FIX / "tokenizer/encode_cases.jsonl", encoding="utf-8") as f:
        cases = [json.loads(row) for row in f]
    assert len(cases) > 30
    for c in cases:
        assert got.encode(c["text"]).ids == c["ids"], c["text"]
        assert got.decode(c["ids"], skip_special_tokens=False) == c["decoded"]
    texts = corpus_lines() + SPECIAL_TEXTS
    for t in texts:
        assert got.encode(t).ids == ref.encode(t).ids, t
    auto_ref = transformers.AutoTokenizer.from_pretrained(str(FIX / "teacher"))
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    for t in texts:
        ids = auto(t)["input_ids"]
        assert ids == auto_ref(t)["input_ids"], t
        assert auto.decode(ids) == auto_ref.decode(ids)
    for attr in ("eos_token", "pad_token", "bos_token", "eos_token_id", "pad_token_id"):
        assert getattr(auto, attr) == getattr(auto_ref, attr), attr
    assert len(auto) == len(auto_ref)
    assert auto.all_special_tokens == auto_ref.all_special_tokens
    cfg = json.loads((out / "tokenizer_config.json").read_text(encoding="utf-8"))
    assert cfg["chat_template"] == TEMPLATE
    assert cfg["model_max_length"] == json.loads((FIX / "teacher/config.json").read_text())[
        "max_position_embeddings"]
    chat = auto.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>user\ndef f(x):\n    return x<|im_end|>\n<|im_start|>assistant\n"
    assert auto(chat)["input_ids"] == auto_ref(chat)["input_ids"]


def llama_cpp_ids(path, texts, add_bos):
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    return [llm.tokenize(t.encode("utf-8"), add_bos=add_bos, special=True) for t in texts]


@pytest.mark.parametrize("pre", ["qwen2", "llama-bpe", "gpt-2", "default"])
def test_rebuilt_tokenizer_splits_as_llama_cpp(teacher_gguf, pre):
    path = foreign(teacher_gguf, f"pre-{pre}", {"tokenizer.ggml.pre": (pre, S)})
    out, _ = to_hf(path)
    got = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    # Qwen2's tokenizer normalises to NFC, llama.cpp does not: compare on text NFC leaves alone
    texts = [t for t in corpus_lines() + SPECIAL_TEXTS if unicodedata.normalize("NFC", t) == t]
    want = llama_cpp_ids(path, texts, add_bos=False)
    for t, w in zip(texts, want):
        assert got.encode(t).ids == w, (pre, t)


def test_added_bos_matches_llama_cpp(teacher_gguf):
    edits = {"tokenizer.ggml.pre": ("llama-bpe", S),
             "tokenizer.ggml.bos_token_id": (1, gguf.GGUFValueType.UINT32),
             "tokenizer.ggml.add_bos_token": (True, gguf.GGUFValueType.BOOL)}
    path = foreign(teacher_gguf, "bos", edits)
    out, _ = to_hf(path)
    texts = corpus_lines(50)
    want = llama_cpp_ids(path, texts, add_bos=True)
    auto = transformers.AutoTokenizer.from_pretrained(str(out))
    assert auto.bos_token == "<|im_start|>"
    for t, w in zip(texts, want):
        assert w[0] == 1
        assert auto(t)["input_ids"] == w, t


@pytest.mark.parametrize("edits,why", [
    ({"tokenizer.ggml.pre": ("deepseek-llm", S)}, "pre-tokenizer 'deepseek-llm' is not rebuilt"),
    ({"tokenizer.ggml.model": ("llama", S)}, "tokenizer.ggml.model 'llama' is not rebuilt"),
])
def test_tokenizer_not_rebuilt_is_one_warning(teacher_gguf, edits, why):
    out, proc = to_hf(foreign(teacher_gguf, why.split("'")[1], edits))
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "warning" in lines[0] and why in lines[0], proc.stderr
    assert not (out / "tokenizer.json").exists() and not (out / "tokenizer_config.json").exists()
    assert (out / "config.json").exists()
