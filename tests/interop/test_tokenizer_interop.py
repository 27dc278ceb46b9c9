"""Tokenizer interop with the reference `tokenizers` library.

Randomized and adversarial texts (all Unicode planes, combining marks, NFC cases, whitespace
runs, digits, contractions, special tokens inline) must give the ids of
tokenizers.Tokenizer.from_file(...).encode(...) and decode back the same, for the fixture
(Qwen2-style) tokenizer and for GPT-2-style and Llama-3-style tokenizer.json files built here
with the `tokenizers` library itself.
"""
import json
import os
import random
import subprocess

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

LMS = os.environ["LMSURGEON"]
FIX = os.environ["LMS_FIXTURES"]

QWEN_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
           r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA_RE = QWEN_RE.replace(r"\p{N}|", r"\p{N}{1,3}|")

SPECIAL_WS = ["\u00a0", "\u3000", "\u2028", "\u2029", "\u180e", "\u200b", "\ufeff", "\u0085",
              "\u1680", "\u2009", "\u202f", "\x0b", "\x0c", "\x1c"]
MARKS = ["\u0301", "\u0300", "\u0327", "\u0308", "\u05b0", "\u093f", "\u0e31", "\u20dd"]
NFC_CASES = ["e\u0301", "\u212b", "\u1100\u1161\u11a8", "\U00016d67\U00016d67",
             "\U0001e4ec\u0300", "a\u0328\u0301", "\u0344", "\u1e9b\u0323", "\uac00\u11a8"]
WORDS = ["hello", "World", "it's", "I'M", "we'LL", "x'\u017f", "don't", "DON'T", "they'RE",
         "caf\u00e9", "na\u00efve", "\u0928\u092e\u0938\u094d\u0924\u0947", "\u4f60\u597d",
         "\u0645\u0631\u062d\u0628\u0627", "\U0001f600\U0001f44d\U0001f3fd", "$hello", "12345",
         "3.14159", "0x1F", "\u0661\u0662\u0663", "\u00b2\u2160", "\u1f08\u0345", "ǅemal"]


def random_cp(rng):
    while True:
        plane = rng.choice([0, 0, 0, 1, 2, 3, 14, 15, 16])
        cp = plane * 0x10000 + rng.randrange(0x10000)
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


def random_text(rng, specials):
    parts = []
    for _ in range(rng.randrange(1, 40)):
        r = rng.random()
        if r < 0.25:
            parts.append(rng.choice(WORDS))
        elif r < 0.40:
            parts.append(rng.choice([" ", "  ", "   ", "\t", "\n", "\n\n", "\r\n", " \n ",
                                     "\n  ", "  \n\n  "]))
        elif r < 0.48:
            parts.append(rng.choice(SPECIAL_WS) * rng.randrange(1, 3))
        elif r < 0.56:
            parts.append(rng.choice(MARKS))
        elif r < 0.62:
            parts.append(rng.choice(NFC_CASES))
        elif r < 0.70:
            parts.append("".join(random_cp(rng) for _ in range(rng.randrange(1, 6))))
        elif r < 0.78:
            parts.append("".join(rng.choice("0123456789") for _ in range(rng.randrange(1, 9))))
        elif r < 0.86:
            parts.append("".join(rng.choice("!?.,;:'\"()[]{}<>|-_+=*&^%$#@~`/\\")
                                 for _ in range(rng.randrange(1, 5))))
        elif r < 0.92 and specials:
            parts.append(rng.choice(specials))
        else:
            parts.append("'" + rng.choice(["s", "S", "t", "re", "Ve", "m", "LL", "d", "x", ""]))
    return "".join(parts)


def lms_encode(tok_path, texts):
    inp = "".join(json.dumps(t) + "\n" for t in texts)
    p = subprocess.run([LMS, "tokenize", "--tokenizer", tok_path, "--jsonl", "--json"],
                       input=inp.encode(), capture_output=True, timeout=300)
    assert p.returncode == 0, p.stderr.decode()
    return [json.loads(l) for l in p.stdout.decode().splitlines()]


def lms_decode(tok_path, ids):
    p = subprocess.run([LMS, "tokenize", "--tokenizer", tok_path, "--decode", "--json",
                        "--text", " ".join(map(str, ids))], capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return json.loads(p.stdout)["text"]


def corpus_lines(n):
    out = []
    with open(os.path.join(FIX, "corpus", "val.jsonl"), encoding="utf-8") as f:
        for line in f:
            out.append(json.loads(line)["text"])
            if len(out) == n:
                break
    return out


def train(tmp_path, name, pre, edit, vocab_size=3000):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    rng = random.Random(7)
    texts = corpus_lines(60) + [random_text(rng, []) for _ in range(300)]
    tok.train_from_iterator(texts, trainer)
    spec = json.loads(tok.to_str())
    edit(spec)
    path = tmp_path / name
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return str(path)


def gpt2_edit(spec):
    spec["post_processor"] = {"type": "ByteLevel", "add_prefix_space": False,
                              "trim_offsets": True, "use_regex": True}


def llama_edit(spec):
    spec["model"]["ignore_merges"] = True
    bos = len(spec["model"]["vocab"])
    spec["added_tokens"].append({"id": bos, "content": "<|begin_of_text|>", "single_word": False,
                                 "lstrip": False, "rstrip": False, "normalized": False,
                                 "special": True})
    spec["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
         "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                    {"Sequence": {"id": "A", "type_id": 0}}],
         "pair": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                  {"Sequence": {"id": "A", "type_id": 0}},
                  {"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 1}},
                  {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {"<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [bos],
                                                   "tokens": ["<|begin_of_text|>"]}}}]}


@pytest.fixture(scope="module")
def tokenizers_under_test(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("tok")
    gpt2 = train(tmp, "gpt2.json", pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                            use_regex=True), gpt2_edit)
    gpt2_prefix = train(tmp, "gpt2-prefix.json",
                        pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True),
                        gpt2_edit)
    llama = train(tmp, "llama3.json", pre_tokenizers.Sequence([
        pre_tokenizers.Split(__import__("tokenizers").Regex(LLAMA_RE), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), llama_edit)
    return {"qwen-fixture": os.path.join(FIX, "tokenizer", "tokenizer.json"),
            "teacher": os.path.join(FIX, "teacher", "tokenizer.json"),
            "gpt2": gpt2, "gpt2-prefix-space": gpt2_prefix, "llama3": llama}


@pytest.mark.parametrize("name", ["qwen-fixture", "teacher", "gpt2", "gpt2-prefix-space",
                                  "llama3"])
def test_random_texts_match_reference(tokenizers_under_test, name):
    path = tokenizers_under_test[name]
    ref = Tokenizer.from_file(path)
    specials = [t.content for t in ref.get_added_tokens_decoder().values()]
    rng = random.Random(hash(name) & 0xFFFF)
    texts = [random_text(rng, specials) for _ in range(3000)] + NFC_CASES + WORDS
    texts += ["", " ", "\n", "a" * 5000, " " * 3000 + "x", "1" * 100, "<|endoftext|>" * 3,
              "x<|endoftext|>y", "\u00e9" * 1000]
    got = lms_encode(path, texts)
    bad = [(t, r.ids, g) for t, r, g in zip(texts, ref.encode_batch(texts), got) if r.ids != g]
    assert not bad, "%d of %d differ; first: %r\nref %r\ngot %r" % (
        len(bad), len(texts), bad[0][0][:200], bad[0][1][:40], bad[0][2][:40])


@pytest.mark.parametrize("name", ["qwen-fixture", "gpt2", "llama3"])
def test_decode_matches_reference(tokenizers_under_test, name):
    path = tokenizers_under_test[name]
    ref = Tokenizer.from_file(path)
    rng = random.Random(5)
    n = ref.get_vocab_size()
    for _ in range(20):
        ids = [rng.randrange(n) for _ in range(rng.randrange(1, 60))]
        assert lms_decode(path, ids) == ref.decode(ids, skip_special_tokens=False)


def test_lone_surrogate_rejected():
    p = subprocess.run([LMS, "tokenize", "--tokenizer", os.path.join(FIX, "tokenizer"),
                        "--jsonl"], input=b'"a\\ud800b"\n', capture_output=True)
    assert p.returncode == 3 and b"line 1" in p.stderr
    p = subprocess.run([LMS, "tokenize", "--tokenizer", os.path.join(FIX, "tokenizer")],
                       input=b"ab\xff\xfe", capture_output=True)
    assert p.returncode == 3 and b"invalid UTF-8 at byte 2" in p.stderr
