"""Indexed dataset interop with megatron-core.

A dataset written by `lmsurgeon preprocess` is read back identically by megatron-core's
IndexedDataset (ids equal to the reference `tokenizers` encoding + EOD), and datasets written by
megatron-core's IndexedDatasetBuilder (uint16 and int32, multi-sequence and empty documents) are
byte-identical to lmsurgeon's for the same documents and are read by lmsurgeon
(`lmsurgeon tokenize --dataset`).
"""
import json
import os
import subprocess
import warnings

import numpy as np
import pytest
from tokenizers import Tokenizer

warnings.filterwarnings("ignore")
IndexedDataset = pytest.importorskip("megatron.core.datasets.indexed_dataset").IndexedDataset
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder  # noqa: E402

LMS = os.environ["LMSURGEON"]
FIX = os.environ["LMS_FIXTURES"]
TOK = os.path.join(FIX, "tokenizer")


def run(*args, **kw):
    p = subprocess.run([LMS, *args], capture_output=True, timeout=300, **kw)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def test_preprocess_read_by_megatron(tmp_path):
    src = tmp_path / "docs.jsonl"
    texts = []
    with open(os.path.join(FIX, "corpus", "val.jsonl"), encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
    docs = [{"text": t} for t in texts[:40]]
    docs.insert(3, {"text": ""})                        # empty document: still recorded
    docs.insert(5, {"text": ["first sentence.", "", "second one"]})  # pre-split sentences
    src.write_text("".join(json.dumps(d) + "\n" for d in docs), encoding="utf-8")
    rc, out, err = run("preprocess", "--input", str(src), "--tokenizer", TOK,
                       "--output-prefix", str(tmp_path / "out"), "--append-eod", "--workers",
                       "2", "--json")
    assert rc == 0, err
    res = json.loads(out)
    prefix = str(tmp_path / "out_text_document")
    assert res["output_prefix"] == prefix
    ds = IndexedDataset(prefix)
    ref = Tokenizer.from_file(os.path.join(TOK, "tokenizer.json"))
    eod = 0
    want_docs = []
    for d in docs:
        sents = d["text"] if isinstance(d["text"], list) else [d["text"]]
        seqs = [ref.encode(s).ids for s in sents]
        seqs = [s for s in seqs if s]
        if seqs:
            seqs[-1] = seqs[-1] + [eod]
        want_docs.append(seqs)
    assert ds.index.dtype == np.uint16
    assert len(ds.document_indices) == len(want_docs) + 1
    k = 0
    for d, seqs in enumerate(want_docs):
        assert ds.document_indices[d + 1] - ds.document_indices[d] == len(seqs)
        for s in seqs:
            assert ds[k].tolist() == s
            k += 1
    assert k == len(ds)
    # same output with one worker: order does not depend on threads
    rc, _, err = run("preprocess", "--input", str(src), "--tokenizer", TOK, "--output-prefix",
                     str(tmp_path / "one"), "--append-eod", "--workers", "1", "--quiet")
    assert rc == 0, err
    for ext in (".bin", ".idx"):
        assert (tmp_path / ("one_text_document" + ext)).read_bytes() == \
            (tmp_path / ("out_text_document" + ext)).read_bytes()


@pytest.mark.parametrize("dtype", [np.uint16, np.int32])
def test_megatron_builder_read_by_lmsurgeon(tmp_path, dtype):
    """A megatron-core dataset of the val corpus documents is byte-identical to the one
    lmsurgeon writes from the same documents, and lmsurgeon's reader accepts it (the
    `tokenize`-side check uses the --json summary of a preprocess over the same text)."""
    ref = Tokenizer.from_file(os.path.join(TOK, "tokenizer.json"))
    texts = []
    with open(os.path.join(FIX, "corpus", "val.jsonl"), encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            if len(texts) == 25:
                break
    prefix = str(tmp_path / "mc")
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for t in texts:
        ids = ref.encode(t).ids + [0]
        b.add_document(np.array(ids, dtype=dtype), [len(ids)])
    b.finalize(prefix + ".idx")
    # lmsurgeon writes the same bytes for the same documents (dtype chosen from the vocab:
    # uint16 here, so only compare the uint16 build byte for byte)
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    rc, out, err = run("preprocess", "--input", str(src), "--tokenizer", TOK, "--output-prefix",
                       str(tmp_path / "l"), "--append-eod", "--quiet")
    assert rc == 0, err
    if dtype == np.uint16:
        for ext in (".bin", ".idx"):
            assert (tmp_path / ("l_text_document" + ext)).read_bytes() == \
                open(prefix + ext, "rb").read()
    # lmsurgeon's reader validates and reads the megatron-core files
    rc, out, err = run("tokenize", "--dataset", prefix)
    assert rc == 0, err
    got = [list(map(int, l.split())) for l in out.splitlines()]
    assert got == [ref.encode(t).ids + [0] for t in texts]
    rc, out, err = run("tokenize", "--dataset", prefix, "--json")
    assert rc == 0, err
    summary = json.loads(out)
    assert summary["documents"] == len(texts)
    assert summary["dtype_code"] == (8 if dtype == np.uint16 else 4)


def test_megatron_multi_sequence_and_empty_documents(tmp_path):
    prefix = str(tmp_path / "mc")
    b = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    b.add_document(np.array([1, 2, 3], dtype=np.int32), [3])
    b.add_document(np.array([], dtype=np.int32), [])
    b.add_document(np.array([4, 5, 6, 7, 151668], dtype=np.int32), [2, 3])
    b.finalize(prefix + ".idx")
    rc, out, err = run("tokenize", "--dataset", prefix)
    assert rc == 0, err
    assert out.splitlines() == ["1 2 3", "", "4 5 6 7 151668"]
    rc, out, err = run("tokenize", "--dataset", prefix, "--json")
    assert json.loads(out)["sequences"] == 3
