#!/usr/bin/env python3
"""Generates the bad-input corpus in tests/bad/ (standard library, deterministic).

Each case is a small checkpoint directory (config.json + safetensors [+ index]) derived
from one valid tiny Qwen3 checkpoint with exactly one defect, or a single file. The NeMo 2,
Megatron and NeMo 1 cases start from that checkpoint converted by the tool itself (LMSURGEON,
default build/cli/lmsurgeon), then get their one defect. The table
CASES below is the single source of truth: it also writes expected.tsv (read by
tests/cli/test_bad_inputs.sh) and README.md. Expectations are what a correct reader must
report, chosen by hand, not copied from the tool's output.

  python3 tests/bad/make_corpus.py            # rewrites tests/bad/cases, expected.tsv, README.md
"""
import atexit
import gzip
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
CASES_DIR = os.path.join(HERE, "cases")

# ---- the valid base checkpoint ----------------------------------------------------------

L, H, F, NH, NG, D, V = 1, 16, 32, 2, 1, 8, 32

BASE_CONFIG = {
    "architectures": ["Qwen3ForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
    "bos_token_id": None, "dtype": "bfloat16", "eos_token_id": None, "head_dim": D,
    "hidden_act": "silu", "hidden_size": H, "initializer_range": 0.02, "intermediate_size": F,
    "layer_types": ["full_attention"] * L, "max_position_embeddings": 128,
    "max_window_layers": L, "model_type": "qwen3", "num_attention_heads": NH,
    "num_hidden_layers": L, "num_key_value_heads": NG, "pad_token_id": None,
    "rms_norm_eps": 1e-06, "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "sliding_window": None, "tie_word_embeddings": False, "transformers_version": "5.17.0",
    "use_cache": True, "use_sliding_window": False, "vocab_size": V,
}

ESIZE = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4, "U8": 1}
RANK = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0",
        "F8_E4M3FNUZ", "F8_E5M2FNUZ", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64",
        "F64", "I64", "U64"]


def base_shapes():
    """(name, shape) in state-dict order."""
    p = "model.layers.0."
    return [
        ("model.embed_tokens.weight", [V, H]),
        (p + "self_attn.q_proj.weight", [NH * D, H]),
        (p + "self_attn.k_proj.weight", [NG * D, H]),
        (p + "self_attn.v_proj.weight", [NG * D, H]),
        (p + "self_attn.o_proj.weight", [H, NH * D]),
        (p + "self_attn.q_norm.weight", [D]),
        (p + "self_attn.k_norm.weight", [D]),
        (p + "mlp.gate_proj.weight", [F, H]),
        (p + "mlp.up_proj.weight", [F, H]),
        (p + "mlp.down_proj.weight", [H, F]),
        (p + "input_layernorm.weight", [H]),
        (p + "post_attention_layernorm.weight", [H]),
        ("model.norm.weight", [H]),
        ("lm_head.weight", [V, H]),
    ]


def data_for(name, shape, dtype="BF16"):
    """Deterministic finite values: bf16 bit patterns of small numbers."""
    n = 1
    for s in shape:
        n *= s
    seed = sum(name.encode()) & 0xFF
    out = bytearray()
    for i in range(n):
        # bf16 with exponent 120..123 and a varying mantissa: |x| in [2^-7, 2^-3)
        hi = 0x3C | ((i + seed) & 0x01) | (((i * 7 + seed) & 0x02) << 6)
        lo = (i * 37 + seed) & 0xFF
        out += bytes((lo, hi))
    return bytes(out[: n * ESIZE[dtype]]) if dtype == "BF16" else bytes(n * ESIZE[dtype])


def tensors(shapes=None):
    return [(n, "BF16", s, data_for(n, s)) for n, s in (shapes or base_shapes())]


def header_dict(ts, metadata=True):
    """Canonical header (dict, insertion-ordered) and the data buffer."""
    ts = sorted(ts, key=lambda t: (-RANK.index(t[1]), t[0].encode()))
    h = {"__metadata__": {"format": "pt"}} if metadata else {}
    off, buf = 0, b""
    for name, dt, shape, data in ts:
        h[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(data)]}
        off += len(data)
        buf += data
    return h, buf


def st_bytes(header, data, raw_header=None):
    """safetensors bytes from a header (dict or raw JSON bytes) and a data buffer."""
    text = raw_header if raw_header is not None else json.dumps(
        header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write(path, content):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as f:
        f.write(content)


def write_config(d, cfg=None, raw=None):
    write(os.path.join(d, "config.json"),
          raw if raw is not None else json.dumps(cfg or BASE_CONFIG, indent=2, sort_keys=True) + "\n")


def single(d, header=None, data=None, raw=None, cfg=None, ts=None):
    """A single-file checkpoint: config + model.safetensors (canonical unless given)."""
    write_config(d, cfg)
    if raw is None:
        h, buf = header_dict(ts or tensors())
        raw = st_bytes(header if header is not None else h, buf if data is None else data)
    write(os.path.join(d, "model.safetensors"), raw)


def mutate(fn):
    """A single-file case whose canonical header dict is changed by fn(header) -> data."""
    def build(d):
        h, buf = header_dict(tensors())
        new = fn(h, buf)
        single(d, header=h, data=buf if new is None else new)
    return build


def raw_header(text, data=b""):
    """A single-file case with the given raw header bytes."""
    def build(d):
        single(d, raw=st_bytes(None, data, raw_header=text))
    return build


SHARD1 = "model-00001-of-00002.safetensors"
SHARD2 = "model-00002-of-00002.safetensors"


def sharded(d, edit=None, shard_edit=None):
    """A two-shard checkpoint; edit(index) and shard_edit(list of shard tensor lists) change it."""
    write_config(d)
    ts = tensors()
    groups = [ts[:7], ts[7:]]
    if shard_edit:
        shard_edit(groups)
    names = [SHARD1, SHARD2]
    wm = {}
    for name, group in zip(names, groups):
        h, buf = header_dict(group)
        write(os.path.join(d, name), st_bytes(h, buf))
    for name, group in zip(names, [ts[:7], ts[7:]]):
        for t in group:
            wm[t[0]] = name
    total = sum(len(t[3]) for t in ts)
    index = {"metadata": {"total_parameters": total // 2, "total_size": total}, "weight_map": wm}
    if edit:
        index = edit(index)
    text = index if isinstance(index, str) else json.dumps(index, indent=2, sort_keys=True) + "\n"
    write(os.path.join(d, "model.safetensors.index.json"), text)


def cfg_with(**kw):
    def build(d):
        cfg = dict(BASE_CONFIG)
        for k, v in kw.items():
            k = k.replace("__", "-")
            if v is KeyError:
                del cfg[k]
            else:
                cfg[k] = v
        single(d, cfg=cfg)
    return build


def first(h):
    return next(k for k in h if k != "__metadata__")


def set_field(field, value, name=None):
    def fn(h, buf):
        h[name or first(h)][field] = value
    return fn


def del_field(field):
    def fn(h, buf):
        del h[first(h)][field]
    return fn


def shift_offsets(h, buf, name, delta_begin, delta_end):
    h[name]["data_offsets"] = [h[name]["data_offsets"][0] + delta_begin,
                               h[name]["data_offsets"][1] + delta_end]


def case_overlap(h, buf):
    names = [k for k in h if k != "__metadata__"]
    shift_offsets(h, buf, names[1], -2, 0)  # second tensor starts 2 bytes early, ends in place
    return None


def case_gap(h, buf):
    names = [k for k in h if k != "__metadata__"]
    for n in names[1:]:
        shift_offsets(h, buf, n, 2, 2)
    return buf[:h[names[0]]["data_offsets"][1]] + b"\0\0" + buf[h[names[0]]["data_offsets"][1]:]


def case_first_not_zero(h, buf):
    for n in [k for k in h if k != "__metadata__"]:
        shift_offsets(h, buf, n, 4, 4)
    return b"\0" * 4 + buf


def case_reversed(h, buf):
    n = first(h)
    b, e = h[n]["data_offsets"]
    h[n]["data_offsets"] = [b, b]  # zero-length first, so the next one is at 0...
    names = [k for k in h if k != "__metadata__"]
    h[names[1]]["data_offsets"] = [e, 0]
    return None


def case_size_mismatch(h, buf):
    n = first(h)
    h[n]["shape"] = [h[n]["shape"][0], h[n]["shape"][1] - 1]  # offsets span one row too many
    return None


def case_huge_dims(h, buf):
    h[first(h)]["shape"] = [1 << 62, 1 << 62]
    return None


def case_duplicate(d):
    h, buf = header_dict(tensors())
    text = json.dumps(h, separators=(",", ":")).encode()
    n = first(h)
    entry = json.dumps(h[n], separators=(",", ":")).encode()
    dup = b'"%s":%s,' % (n.encode(), entry)
    text = text.replace(b'"%s":' % n.encode(), dup + b'"%s":' % n.encode(), 1)
    single(d, raw=st_bytes(None, buf, raw_header=text))


def case_newline_name(h, buf):
    n = first(h)
    h["evil\nname\x1b[31m"] = h.pop(n)
    h["evil\nname\x1b[31m"]["dtype"] = "NOPE"
    return None


def case_idx_missing_shard(d):
    def ed(ix):
        ix["weight_map"]["model.extra.weight"] = "model-00003-of-00003.safetensors"
        return ix
    sharded(d, ed)


def case_idx_tensor_absent(d):
    def ed(ix):
        ix["weight_map"]["model.layers.0.extra.weight"] = SHARD2
        return ix
    sharded(d, ed)


def case_idx_unlisted(d):
    def ed(ix):
        del ix["weight_map"]["model.layers.0.mlp.up_proj.weight"]
        return ix
    sharded(d, ed)


def case_idx_wrong_shard(d):
    def ed(ix):
        ix["weight_map"]["model.norm.weight"] = SHARD1
        return ix
    sharded(d, ed)


def case_idx_wm_not_object(d):
    def ed(ix):
        ix["weight_map"] = sorted(ix["weight_map"].items())
        return ix
    sharded(d, ed)


def case_idx_wm_missing(d):
    def ed(ix):
        del ix["weight_map"]
        return ix
    sharded(d, ed)


def case_idx_value_not_string(d):
    def ed(ix):
        ix["weight_map"]["model.norm.weight"] = 2
        return ix
    sharded(d, ed)


def case_idx_invalid_json(d):
    sharded(d, lambda ix: json.dumps(ix, indent=2)[:-3] + "\n")


def case_idx_traversal(d):
    def ed(ix):
        ix["weight_map"]["model.extra.weight"] = "../" + SHARD2
        return ix
    sharded(d, ed)


def case_idx_bad_shard(d):
    sharded(d)
    p = os.path.join(d, SHARD2)
    with open(p, "rb") as f:
        content = f.read()
    write(p, content[:-10])


def case_cfg_missing(d):
    single(d)
    os.remove(os.path.join(d, "config.json"))


def case_no_weights(d):
    write_config(d)


def case_shape_mismatch(d):
    shapes = [(n, [NH * D, H + 1] if n.endswith("q_proj.weight") else s) for n, s in base_shapes()]
    single(d, ts=tensors(shapes))


def case_missing_tensor(d):
    shapes = [(n, s) for n, s in base_shapes() if not n.endswith("k_norm.weight")]
    single(d, ts=tensors(shapes))


def case_layer_out_of_range(d):
    shapes = base_shapes() + [("model.layers.5.input_layernorm.weight", [H])]
    single(d, ts=tensors(shapes))


def case_file_not_checkpoint(path):
    write(path, "this is not a checkpoint\n")


# ---- NeMo 2, Megatron and NeMo 1 cases: the base converted by the tool, then one defect --

ROOT = os.path.dirname(os.path.dirname(HERE))
_converted = {}


def converted(fmt):
    """Path of the base checkpoint converted to fmt ("nemo", "megatron", "nemo1"), made once."""
    if fmt not in _converted:
        tmp = tempfile.mkdtemp(prefix="lms-bad-base-")
        atexit.register(shutil.rmtree, tmp, True)
        base = os.path.join(tmp, "base")
        single(base)
        out = os.path.join(tmp, "out.nemo" if fmt == "nemo1" else "out")
        exe = os.environ.get("LMSURGEON", os.path.join(ROOT, "build", "cli", "lmsurgeon"))
        subprocess.run([exe, "convert", base, out, "--to", fmt, "--quiet"], check=True)
        _converted[fmt] = out
    return _converted[fmt]


def copy_of(fmt, d):
    src = converted(fmt)
    if os.path.isdir(src):
        shutil.copytree(src, d)
    else:
        shutil.copyfile(src, d)


def nemo_case(edit, fmt="nemo"):
    """A copy of the converted checkpoint, then edit(d) changes it."""
    def build(d):
        copy_of(fmt, d)
        edit(d)
    return build


def rm(*rel):
    def edit(d):
        for r in rel:
            p = os.path.join(d, r)
            shutil.rmtree(p) if os.path.isdir(p) else os.remove(p)
    return edit


def put(rel, content, also_rm=()):
    def edit(d):
        for r in also_rm:
            os.remove(os.path.join(d, r))
        write(os.path.join(d, rel), content)
    return edit


def truncate_file(rel, keep):
    def edit(d):
        p = os.path.join(d, rel)
        with open(p, "rb") as f:
            content = f.read()
        write(p, content[:keep] if keep >= 0 else content[:keep])
    return edit


def edit_text(rel, old, new, also_rm=()):
    def edit(d):
        for r in also_rm:
            os.remove(os.path.join(d, r))
        p = os.path.join(d, rel)
        with open(p) as f:
            text = f.read()
        assert old in text, (rel, old)
        write(p, text.replace(old, new, 1))
    return edit


def edit_bytes(rel, old, new, also_rm=()):
    """edit_text on the raw bytes, for defects that are not text (invalid UTF-8)."""
    def edit(d):
        for r in also_rm:
            os.remove(os.path.join(d, r))
        p = os.path.join(d, rel)
        with open(p, "rb") as f:
            data = f.read()
        assert old in data, (rel, old)
        write(p, data.replace(old, new, 1))
    return edit


def edit_json(rel, fn, also_rm=()):
    def edit(d):
        for r in also_rm:
            os.remove(os.path.join(d, r))
        p = os.path.join(d, rel)
        with open(p) as f:
            obj = json.load(f)
        obj = fn(obj)
        write(p, json.dumps(obj, indent=2) + "\n")
    return edit


def io_json_drop_config(io_obj):
    """io.json without the object at <root>.model.config."""
    for k, v in list(io_obj["objects"].items()):
        if "<root>.model.config" in v.get("paths", []):
            v["paths"] = [p for p in v["paths"] if p != "<root>.model.config"]
    return io_obj


def io_json_heads(value):
    def fn(io_obj):
        for v in io_obj["objects"].values():
            if "<root>.model.config" in v.get("paths", []):
                for it in v["items"]:
                    if it[0] == "Attr(name='num_attention_heads')":
                        it[1]["value"] = value
        return io_obj
    return fn


def nemo1_tar(members, compress=False):
    """A .nemo tarball from (name, bytes) members (ustar, as NeMo writes them)."""
    def build(path):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
            for name, data in members(path):
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                ti.mtime = 0
                tf.addfile(ti, io.BytesIO(data))
        data = buf.getvalue()
        write(path, gzip.compress(data, mtime=0) if compress else data)
    return build


def nemo1_members(drop=(), replace=None):
    """The members of the converted .nemo, without drop, with replace {name: bytes}."""
    def members(_path):
        out = []
        with tarfile.open(converted("nemo1")) as tf:
            for ti in tf.getmembers():
                if not ti.isfile():
                    continue
                name = ti.name[2:] if ti.name.startswith("./") else ti.name
                if name in drop:
                    continue
                data = tf.extractfile(ti).read()
                if replace and name in replace:
                    data = replace[name](data) if callable(replace[name]) else replace[name]
                out.append(("./" + name, data))
        return out
    return members


def nemo1_truncated(keep):
    def build(path):
        with open(converted("nemo1"), "rb") as f:
            data = f.read()
        write(path, data[:keep])
    return build


def nemo1_traversal(path):
    members = nemo1_members()(path)
    members.append(("../escape.txt", b"x"))
    nemo1_tar(lambda _p: members)(path)


W = "weights"
MEG = "iter_0000000"
IO = "context/io.json"
HFC = "context/hf_config.json"
MEGHF = MEG + "/hf_config.json"
RUNCFG = MEG + "/run_config.yaml"

MS = "model.safetensors"
CFG = "config.json"
IDX = "model.safetensors.index.json"

# name, builder, what is wrong, exit code, file that the message must name ("." = the case
# itself), substring the message must contain
CASES = [
    # -- safetensors framing
    ("st_short", lambda d: single(d, raw=b"\x10\0\0\0\0"), "file of 5 bytes, shorter than the 8-byte length prefix",
     3, MS, "shorter than the 8-byte"),
    ("st_empty", lambda d: single(d, raw=b""), "empty file", 3, MS, "shorter than the 8-byte"),
    ("st_header_past_eof", lambda d: single(d, raw=struct.pack("<Q", 1000) + b'{"a":1}'),
     "header length 1000 in a 15-byte file", 3, MS, "past the end"),
    ("st_header_too_large", lambda d: single(d, raw=struct.pack("<Q", 100_000_001)),
     "header length 100,000,001 (> 100,000,000)", 3, MS, "exceeds the 100000000-byte limit"),
    ("st_header_len_u64_max", lambda d: single(d, raw=b"\xff" * 8 + b"{}      "),
     "header length 2^64-1 (overflows 8 + N)", 3, MS, "exceeds the 100000000-byte limit"),
    # -- header text (rules 4-6)
    ("st_bad_utf8", raw_header(b'{"__metadata__":{"format":"p\xfft"}}'),
     "invalid UTF-8 byte in the header", 3, MS, "not valid UTF-8"),
    ("st_overlong_utf8", raw_header(b'{"__metadata__":{"format":"\xc0\xaf"}}'),
     "overlong UTF-8 encoding in the header", 3, MS, "not valid UTF-8"),
    ("st_invalid_json", raw_header(b'{"a": {"dtype": "BF16", '), "truncated JSON header",
     3, MS, "not valid JSON"),
    ("st_not_object", raw_header(b"[1, 2, 3]"), "header is a JSON array", 3, MS,
     "not a JSON object"),
    ("st_entry_not_object", raw_header(b'{"t": 5}'), "tensor entry is a number", 3, MS,
     "entry is not an object"),
    ("st_missing_dtype", mutate(del_field("dtype")), "tensor entry without dtype", 3, MS,
     "missing 'dtype'"),
    ("st_missing_shape", mutate(del_field("shape")), "tensor entry without shape", 3, MS,
     "missing 'shape'"),
    ("st_missing_offsets", mutate(del_field("data_offsets")), "tensor entry without data_offsets",
     3, MS, "missing 'data_offsets'"),
    ("st_unknown_dtype", mutate(set_field("dtype", "BF17")), "dtype 'BF17'", 3, MS,
     "unknown dtype 'BF17'"),
    ("st_lowercase_dtype", mutate(set_field("dtype", "bf16")), "dtype 'bf16' (names are case-sensitive)",
     3, MS, "unknown dtype 'bf16'"),
    ("st_dtype_not_string", mutate(set_field("dtype", 16)), "dtype is a number", 3, MS,
     "'dtype' is not a string"),
    ("st_shape_not_array", mutate(set_field("shape", "32,16")), "shape is a string", 3, MS,
     "'shape' is not an array"),
    ("st_negative_dim", mutate(set_field("shape", [-32, 16])), "negative dimension", 3, MS,
     "not a non-negative integer"),
    ("st_float_dim", mutate(set_field("shape", [32.0, 16])), "non-integer dimension 32.0", 3, MS,
     "not a non-negative integer"),
    ("st_huge_dims", mutate(case_huge_dims), "shape [2^62, 2^62]: element count overflows", 3, MS,
     "too large"),
    ("st_offsets_one", mutate(set_field("data_offsets", [0])), "data_offsets with one entry", 3,
     MS, "needs 2 entries"),
    ("st_offsets_three", mutate(set_field("data_offsets", [0, 1024, 2048])),
     "data_offsets with three entries", 3, MS, "data_offsets"),
    ("st_offsets_strings", mutate(set_field("data_offsets", ["0", "1024"])),
     "data_offsets are strings", 3, MS, "not a non-negative integer"),
    ("st_metadata_non_string", mutate(lambda h, b: h["__metadata__"].update(format=1)),
     "__metadata__ value is a number", 3, MS, "'__metadata__'"),
    ("st_metadata_not_object", mutate(lambda h, b: h.__setitem__("__metadata__", "pt")),
     "__metadata__ is a string", 3, MS, "'__metadata__'"),
    ("st_duplicate_name", case_duplicate, "the same tensor name twice in the header", 3, MS,
     "duplicate"),
    ("st_control_chars_in_name", mutate(case_newline_name),
     "tensor name with a newline and an escape sequence, unknown dtype", 3, MS,
     "unknown dtype 'NOPE'"),
    # -- layout (rules 7-9)
    ("st_overlap", mutate(case_overlap), "second tensor overlaps the first", 3, MS, "overlap"),
    ("st_gap", mutate(case_gap), "two unused bytes between the first two tensors", 3, MS, "gap"),
    ("st_first_not_at_zero", mutate(case_first_not_zero), "first tensor starts at byte 4", 3,
     MS, "expected to start at 0"),
    ("st_reversed_offsets", mutate(case_reversed), "data_offsets [end, begin] reversed", 3, MS,
     "reversed"),
    ("st_size_mismatch", mutate(case_size_mismatch), "offsets span more bytes than shape x dtype",
     3, MS, "shape x dtype"),
    ("st_sub_byte", mutate(lambda h, b: h[first(h)].update(dtype="F4", shape=[2047])),
     "F4 tensor of 2047 elements (8188 bits, not whole bytes)", 3, MS, "whole bytes"),
    ("st_trailing_bytes", mutate(lambda h, b: b + b"\0" * 16), "16 bytes after the last tensor", 3,
     MS, "trailing bytes"),
    ("st_truncated", mutate(lambda h, b: b[:-100]), "data buffer 100 bytes short", 3, MS,
     "truncated"),
    # -- sharded checkpoints (index)
    ("idx_missing_shard", case_idx_missing_shard, "index names a shard file that does not exist",
     3, IDX, "model-00003-of-00003.safetensors"),
    ("idx_tensor_absent", case_idx_tensor_absent, "index lists a tensor its shard does not hold",
     3, IDX, "model.layers.0.extra.weight"),
    ("idx_unlisted_tensor", case_idx_unlisted, "a shard holds a tensor the index does not list",
     3, SHARD2, "model.layers.0.mlp.up_proj.weight"),
    ("idx_wrong_shard", case_idx_wrong_shard, "index places a tensor in the other shard", 3,
     SHARD2, "model.norm.weight"),
    ("idx_weight_map_not_object", case_idx_wm_not_object, "weight_map is an array", 3, IDX,
     "weight_map"),
    ("idx_weight_map_missing", case_idx_wm_missing, "no weight_map", 3, IDX, "weight_map"),
    ("idx_value_not_string", case_idx_value_not_string, "weight_map value is a number", 3, IDX,
     "not a string"),
    ("idx_invalid_json", case_idx_invalid_json, "index is truncated JSON", 3, IDX, "invalid JSON"),
    ("idx_path_traversal", case_idx_traversal, "index names '../model-00002-of-00002.safetensors'",
     3, IDX, "invalid shard file"),
    ("idx_bad_shard", case_idx_bad_shard, "second shard truncated by 10 bytes", 3, SHARD2,
     "truncated"),
    # -- config.json
    ("cfg_missing", case_cfg_missing, "model.safetensors without config.json", 3, ".",
     "no config.json"),
    ("cfg_invalid_json", lambda d: single(d) or write_config(d, raw='{"hidden_size": 16,\n'),
     "config.json is truncated JSON", 3, CFG, "invalid JSON"),
    ("cfg_not_object", lambda d: single(d) or write_config(d, raw="[16, 32]\n"),
     "config.json is an array", 3, CFG, "not a JSON object"),
    ("cfg_missing_hidden_size", cfg_with(hidden_size=KeyError), "no hidden_size", 3, CFG,
     "'hidden_size' is missing"),
    ("cfg_hidden_size_string", cfg_with(hidden_size="16"), "hidden_size is a string", 3, CFG,
     "'hidden_size' is not an integer"),
    ("cfg_negative_layers", cfg_with(num_hidden_layers=-1), "num_hidden_layers -1", 3, CFG,
     "num_hidden_layers is -1"),
    ("cfg_zero_heads", cfg_with(num_attention_heads=0), "num_attention_heads 0", 3, CFG,
     "'num_attention_heads' is 0"),
    ("cfg_heads_not_dividing", cfg_with(num_attention_heads=3, num_key_value_heads=2),
     "3 heads in 2 query groups", 3, CFG, "not a multiple"),
    ("cfg_huge_vocab", cfg_with(vocab_size=1 << 40), "vocab_size 2^40", 3, CFG,
     "vocab_size is 1099511627776"),
    ("cfg_huge_layers_real", cfg_with(num_hidden_layers=1e300), "num_hidden_layers 1e300", 3, CFG,
     "num_hidden_layers"),
    ("cfg_head_dim_odd", cfg_with(head_dim=7), "head_dim 7 (RoPE needs pairs)", 3, CFG,
     "head_dim 7 is odd"),
    ("cfg_unsupported_arch", cfg_with(architectures=["GPT2LMHeadModel"], model_type="gpt2"),
     "architecture GPT2LMHeadModel", 3, CFG, "unsupported architecture 'GPT2LMHeadModel'"),
    ("cfg_no_arch", cfg_with(architectures=KeyError, model_type=KeyError),
     "neither architectures nor model_type", 3, CFG, "architectures"),
    ("cfg_hidden_act", cfg_with(hidden_act="gelu"), "hidden_act gelu", 3, CFG, "hidden_act"),
    # -- checkpoint vs config
    ("model_shape_mismatch", case_shape_mismatch, "q_proj is [16, 17], config implies [16, 16]", 3,
     ".", "config implies"),
    ("model_missing_tensor", case_missing_tensor, "k_norm of layer 0 is missing", 3, ".",
     "model.layers.0.self_attn.k_norm.weight' is missing"),
    ("model_layer_out_of_range", case_layer_out_of_range, "a tensor of layer 5 in a 1-layer model",
     3, ".", "layer 5"),
    ("model_no_weights", case_no_weights, "config.json but no safetensors", 3, ".",
     "model.safetensors"),
    # -- not a checkpoint at all
    ("file_not_checkpoint.txt", case_file_not_checkpoint, "a text file", 3, ".",
     "not a checkpoint"),
]

# Cases added for the other readers and more safetensors / config.json defects. Expectations
# are filled in NEW_EXPECT below (by name) so the table stays readable.
NEW_CASES = [
    # -- safetensors
    ("st_header_len_zero", lambda d: single(d, raw=struct.pack("<Q", 0)),
     "header length 0 (no JSON at all)"),
    ("st_nan_in_header", raw_header(b'{"a":{"dtype":"F32","shape":[NaN],"data_offsets":[0,4]}}'),
     "NaN in the header (not JSON)"),
    ("st_offsets_negative", mutate(set_field("data_offsets", [-2, 1022])),
     "data_offsets start at -2"),
    ("st_offsets_past_end", mutate(set_field("data_offsets", [0, 1 << 40])),
     "data_offsets end 2^40 bytes in"),
    ("st_too_many_dims", mutate(set_field("shape", [1] * 20)), "shape of 20 dimensions"),
    ("st_empty_header", raw_header(b"{}"), "no tensors at all"),
    ("st_metadata_nested", mutate(lambda h, b: h["__metadata__"].update(nested={"a": "b"})),
     "__metadata__ value is an object"),
    ("st_offsets_not_array", mutate(set_field("data_offsets", "0-1024")),
     "data_offsets is a string"),
    ("st_dim_too_large_for_json", raw_header(
        b'{"a":{"dtype":"F32","shape":[99999999999999999999],"data_offsets":[0,4]}}'),
     "dimension larger than 2^64"),
    ("st_nul_in_name", mutate(lambda h, b: h.__setitem__("a\u0000b", h.pop(first(h))) or None),
     "tensor name with a NUL character"),
    # -- config.json
    ("cfg_zero_kv_heads", cfg_with(num_key_value_heads=0), "num_key_value_heads 0"),
    ("cfg_vocab_zero", cfg_with(vocab_size=0), "vocab_size 0"),
    ("cfg_head_dim_zero", cfg_with(head_dim=0), "head_dim 0"),
    ("cfg_ffn_negative", cfg_with(intermediate_size=-32), "intermediate_size -32"),
    ("cfg_layers_fraction", cfg_with(num_hidden_layers=1.5), "num_hidden_layers 1.5"),
    ("cfg_eps_string", cfg_with(rms_norm_eps="1e-6"), "rms_norm_eps is a string"),
    ("cfg_eps_negative", cfg_with(rms_norm_eps=-1e-6), "rms_norm_eps negative"),
    ("cfg_rope_theta_zero", cfg_with(rope_parameters={"rope_theta": 0.0,
                                                      "rope_type": "default"}),
     "rope_theta 0"),
    ("cfg_rope_type_unknown", cfg_with(rope_parameters={"rope_theta": 10000.0,
                                                        "rope_type": "frobnicate"}),
     "rope_type 'frobnicate'"),
    ("cfg_max_pos_negative", cfg_with(max_position_embeddings=-1),
     "max_position_embeddings -1"),
    ("cfg_duplicate_key", lambda d: single(d) or write_config(
        d, raw=json.dumps(BASE_CONFIG)[:-1] + ', "hidden_size": 32}\n'),
     "hidden_size twice (duplicate key)"),
    ("cfg_bad_utf8", lambda d: single(d) or write_config(
        d, raw=json.dumps(BASE_CONFIG).encode()[:-1] + b', "name": "\xff"}\n'),
     "invalid UTF-8 in config.json"),
    ("cfg_empty_file", lambda d: single(d) or write_config(d, raw=""), "config.json is empty"),
    ("cfg_arch_not_list", cfg_with(architectures="Qwen3ForCausalLM", model_type=KeyError),
     "architectures is a string, no model_type"),
    # -- sharded index
    ("idx_not_object", lambda d: sharded(d, lambda ix: "[1, 2]\n"), "index is a JSON array"),
    ("idx_absolute_path", lambda d: sharded(d, lambda ix: ix["weight_map"].update(
        {"model.extra.weight": "/etc/passwd"}) or ix), "index names the shard '/etc/passwd'"),
    ("idx_empty_weight_map", lambda d: sharded(d, lambda ix: ix.update(weight_map={}) or ix),
     "weight_map is empty"),
    # -- checkpoint vs config
    ("model_embed_wrong_vocab", lambda d: single(d, ts=tensors(
        [(n, [V + 1, H] if n == "model.embed_tokens.weight" else s) for n, s in base_shapes()])),
     "embedding has 33 rows for vocab_size 32 (lm_head 32)"),
    # -- NeMo 2 checkpoint directory
    ("nemo_io_json_invalid", nemo_case(put(IO, '{"root": ', also_rm=[HFC])),
     "context/io.json is truncated JSON (no hf_config.json)"),
    ("nemo_io_json_no_config", nemo_case(edit_json(IO, io_json_drop_config, also_rm=[HFC])),
     "io.json has no object at <root>.model.config"),
    ("nemo_io_json_zero_heads", nemo_case(edit_json(IO, io_json_heads(0), also_rm=[HFC])),
     "io.json num_attention_heads 0"),
    ("nemo_hf_config_invalid", nemo_case(put(HFC, "{")), "context/hf_config.json is truncated"),
    ("nemo_metadata_json_missing", nemo_case(rm(W + "/metadata.json")),
     "weights/metadata.json is missing"),
    ("nemo_backend_zarr", nemo_case(put(W + "/metadata.json",
                                        '{"sharded_backend": "zarr"}\n')),
     "sharded_backend zarr"),
    ("nemo_metadata_truncated", nemo_case(truncate_file(W + "/.metadata", 200)),
     "weights/.metadata cut to 200 bytes"),
    ("nemo_metadata_missing", nemo_case(rm(W + "/.metadata")), "weights/.metadata is missing"),
    ("nemo_distcp_truncated", nemo_case(truncate_file(W + "/__0_0.distcp", 1000)),
     "weights/__0_0.distcp cut to 1000 bytes"),
    ("nemo_distcp_missing", nemo_case(rm(W + "/__0_0.distcp")),
     "weights/__0_0.distcp is missing"),
    ("nemo_metadata_not_pickle", nemo_case(put(W + "/.metadata", "not a pickle\n")),
     "weights/.metadata is text"),
    # -- Megatron checkpoint directory
    ("meg_no_config", nemo_case(rm(MEGHF, RUNCFG), "megatron"),
     "neither hf_config.json nor run_config.yaml"),
    ("meg_run_config_no_heads", nemo_case(edit_text(RUNCFG, "  num_attention_heads: 2\n", "",
                                                    also_rm=[MEGHF]), "megatron"),
     "run_config.yaml without num_attention_heads"),
    ("meg_run_config_unknown_class", nemo_case(edit_text(
        RUNCFG, "Qwen3ModelProvider", "GPTOSSModelProvider", also_rm=[MEGHF]), "megatron"),
     "run_config.yaml model class GPTOSSModelProvider"),
    ("meg_latest_garbage", nemo_case(put("latest_checkpointed_iteration.txt", "abc\n"),
                                     "megatron"),
     "latest_checkpointed_iteration.txt says 'abc'"),
    ("meg_iter_missing", nemo_case(put("latest_checkpointed_iteration.txt", "7\n"), "megatron"),
     "latest iteration 7 has no iter_0000007"),
    ("meg_distcp_truncated", nemo_case(truncate_file(MEG + "/__0_0.distcp", 100), "megatron"),
     "iter_0000000/__0_0.distcp cut to 100 bytes"),
    # -- NeMo 1 .nemo tarball
    ("nemo1_truncated.nemo", nemo1_truncated(20000), "tarball cut to 20000 bytes"),
    ("nemo1_no_model_config.nemo", nemo1_tar(nemo1_members(drop=("model_config.yaml",))),
     "no model_config.yaml"),
    ("nemo1_path_traversal.nemo", nemo1_traversal, "a member named ../escape.txt"),
    ("nemo1_gzip_truncated.nemo", lambda p: write(p, gzip.compress(
        open(converted("nemo1"), "rb").read(), mtime=0)[:3000]), "gzip tarball cut short"),
    ("nemo1_no_weights.nemo", nemo1_tar(nemo1_members(drop=(
        "model_weights/__0_0.distcp", "model_weights/.metadata", "model_weights/common.pt",
        "model_weights/metadata.json"))), "no model_weights"),
    ("nemo1_yaml_zero_heads.nemo", nemo1_tar(nemo1_members(
        drop=("hf_config.json",), replace={"model_config.yaml": lambda b: b.replace(
            b"num_attention_heads: 2", b"num_attention_heads: 0")})),
     "model_config.yaml num_attention_heads 0 (no hf_config.json)"),
    ("nemo1_metadata_truncated.nemo", nemo1_tar(nemo1_members(
        replace={"model_weights/.metadata": lambda b: b[:300]})),
     "model_weights/.metadata cut to 300 bytes"),
    # invalid UTF-8 in a YAML config the fields are read from (not "out of memory")
    ("nemo_model_yaml_bad_utf8", nemo_case(edit_bytes(
        "context/model.yaml", b'normalization: "RMSNorm"', b'normalization: "RMS\xffNorm"',
        also_rm=[HFC])), "context/model.yaml with a 0xff byte in a value (no hf_config.json)"),
    ("meg_run_config_bad_utf8", nemo_case(edit_bytes(
        RUNCFG, b'normalization: "RMSNorm"', b'normalization: "RMS\xc0\xafNorm"',
        also_rm=[MEGHF]), "megatron"),
     "run_config.yaml with an overlong UTF-8 sequence in a value"),
    ("nemo1_yaml_bad_utf8.nemo", nemo1_tar(nemo1_members(
        drop=("hf_config.json",), replace={"model_config.yaml": lambda b: b.replace(
            b"normalization: rmsnorm", b"normalization: rms\x80norm")})),
     "model_config.yaml with a stray continuation byte (no hf_config.json)"),
]


def new_cases():
    rows = []
    for name, build, what in NEW_CASES:
        code, names, sub = NEW_EXPECT[name]
        rows.append((name, build, what, code, names, sub))
    return rows


# Importance files for `prune --importance` on fixtures/models/qwen3-tiny (L=4, H=64, F=160,
# n_h=4, n_g=2), written to tests/bad/importance/ and run by tests/cli/test_data_bad_inputs.sh.
IMP_HEAD = '"format": "lmsurgeon-importance", "version": %d'
IMP_MODEL = ('"model": {"num_layers": %d, "hidden_size": 64, "ffn_hidden_size": 160, '
             '"num_attention_heads": 4, "num_query_groups": %d}')


def imp(version=1, layers=4, groups=2, rest=""):
    return "{" + IMP_HEAD % version + ", " + IMP_MODEL % (layers, groups) + rest + "}\n"


# name, content, what is wrong, exit code, message fragment
IMPORTANCE_CASES = [
    ("not_object", "[]\n", "a JSON array", 3, "'format' is not \"lmsurgeon-importance\""),
    ("empty", "", "empty file", 3, "invalid JSON"),
    ("truncated", imp()[:60], "JSON cut short", 3, "invalid JSON"),
    ("other_format", '{"format": "other", "version": 1}\n', "format 'other'", 3,
     "'format' is not \"lmsurgeon-importance\""),
    ("version_3", imp(version=3), "version 3", 3, "unsupported 'version' (expected 1 or 2)"),
    ("zero_layers", imp(layers=0), "model.num_layers 0", 3,
     "'model.num_layers' is missing or not a positive integer"),
    ("other_model", imp(layers=5), "scores a 5-layer model", 3, "scores a model of L=5"),
    ("layers_short", imp(rest=', "layers": [1, 2, 3]'), "3 layer scores for 4 layers", 3,
     "'layers' must be an array of 4 numbers"),
    ("layers_string", imp(rest=', "layers": [1, "x", 3, 4]'), "a layer score is a string", 3,
     "'layers' entry 1 is not a finite number"),
    ("layers_overflow", imp(rest=', "layers": [1e999, 1, 1, 1]'), "a score of 1e999", 3,
     "real number overflow"),
    ("ffn_ragged", imp(rest=', "ffn": [[1, 2], [3]]'), "ffn rows for 2 of 4 layers", 3,
     "'ffn' must hold one array per layer (4)"),
    ("metric_unknown", imp(version=2, rest=', "layer_metric": "magic"'),
     "layer_metric 'magic'", 3, "'layer_metric' is not bi, block-bi, ppl or contiguous"),
    ("raw_no_counts", imp(version=2, rest=', "raw": {"rows": 0, "row_length": 16}'),
     "raw sums without their row counts", 3, "'raw.cos_rows' is missing or not a count"),
]


def write_importance():
    d = os.path.join(HERE, "importance")
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    lines = ["# case\texit\tmessage substring (generated by make_corpus.py)"]
    table = ["# Bad importance files", "",
             "Generated by `make_corpus.py`. `tests/cli/test_data_bad_inputs.sh` runs",
             "`lmsurgeon prune fixtures/models/qwen3-tiny OUT --importance NAME.json",
             "--target-ffn-hidden-size 16` on each and expects the exit code and a one-line error",
             "naming the file and containing the fragment:", "",
             "| case | defect | exit | message contains |", "|---|---|---|---|"]
    for name, content, what, code, frag in IMPORTANCE_CASES:
        write(os.path.join(d, name + ".json"), content)
        lines.append("%s\t%d\t%s" % (name, code, frag))
        table.append("| `%s` | %s | %d | `%s` |" % (name, what, code, frag))
    write(os.path.join(d, "expected.tsv"), "\n".join(lines) + "\n")
    write(os.path.join(d, "README.md"), "\n".join(table) + "\n")


# name: (exit code, file the message names, text it contains)
NEW_EXPECT = {
    "st_header_len_zero": (3, MS, "not valid JSON"),
    "st_nan_in_header": (3, MS, "not valid JSON"),
    "st_offsets_negative": (3, MS, "not a non-negative integer"),
    "st_offsets_past_end": (3, MS, "expected to start at 1099511627776"),
    "st_too_many_dims": (3, MS, "has 20 entries (at most 8)"),
    "st_empty_header": (3, ".", "model.embed_tokens.weight' is missing"),
    "st_metadata_nested": (3, MS, "'__metadata__' value of 'nested' is not a string"),
    "st_offsets_not_array": (3, MS, "'data_offsets' is not an array"),
    "st_dim_too_large_for_json": (3, MS, "too big integer"),
    "st_nul_in_name": (3, MS, "NUL byte"),
    "cfg_zero_kv_heads": (3, CFG, "num_key_value_heads is 0"),
    "cfg_vocab_zero": (3, CFG, "vocab_size is 0"),
    "cfg_head_dim_zero": (3, CFG, "head_dim is 0"),
    "cfg_ffn_negative": (3, CFG, "intermediate_size is -32"),
    "cfg_layers_fraction": (3, CFG, "'num_hidden_layers' is not an integer"),
    "cfg_eps_string": (3, CFG, "'rms_norm_eps' is not a number"),
    "cfg_eps_negative": (3, CFG, "rms_norm_eps -1e-06 is not in (0, 1)"),
    "cfg_rope_theta_zero": (3, CFG, "rope_theta 0 is not positive"),
    "cfg_rope_type_unknown": (3, CFG, "unsupported rope type 'frobnicate'"),
    "cfg_max_pos_negative": (3, CFG, "max_position_embeddings is -1"),
    "cfg_duplicate_key": (3, CFG, "duplicate object key"),
    "cfg_bad_utf8": (3, CFG, "invalid JSON"),
    "cfg_empty_file": (3, CFG, "invalid JSON"),
    "cfg_arch_not_list": (3, CFG, "neither 'architectures' nor 'model_type'"),
    "idx_not_object": (3, IDX, "'weight_map' is missing or not an object"),
    "idx_absolute_path": (3, IDX, "invalid shard file name '/etc/passwd'"),
    "idx_empty_weight_map": (3, ".", "model.embed_tokens.weight' is missing"),
    "model_embed_wrong_vocab": (3, ".", "has shape [33, 16], the config implies [32, 16]"),
    "nemo_io_json_invalid": (3, IO, "invalid JSON"),
    "nemo_io_json_no_config": (3, IO, "no object at '<root>.model.config'"),
    "nemo_io_json_zero_heads": (3, IO, "num_attention_heads"),
    "nemo_hf_config_invalid": (3, HFC, "invalid JSON"),
    "nemo_metadata_json_missing": (3, W + "/metadata.json", "No such file"),
    "nemo_backend_zarr": (3, W + "/metadata.json", "sharded_backend 'zarr'"),
    "nemo_metadata_truncated": (3, W + "/.metadata", "past the end"),
    "nemo_metadata_missing": (3, W + "/.metadata", "No such file"),
    "nemo_distcp_truncated": (3, W, "past the end of '__0_0.distcp' (1000 bytes)"),
    "nemo_distcp_missing": (4, W + "/__0_0.distcp", "No such file"),
    "nemo_metadata_not_pickle": (3, W + "/.metadata", "opcode 0x6e at byte 0"),
    "meg_no_config": (3, MEG, "no hf_config.json, run_config.yaml or Megatron-LM args in common.pt"),
    "meg_run_config_no_heads": (3, RUNCFG, "num_attention_heads is not given"),
    "meg_run_config_unknown_class": (3, RUNCFG, "unsupported model config class "
                                                "'GPTOSSModelProvider'"),
    "meg_latest_garbage": (3, "latest_checkpointed_iteration.txt", "'abc' is not a number"),
    "meg_iter_missing": (3, ".", "no directory for iteration 7"),
    "meg_distcp_truncated": (3, MEG, "past the end of '__0_0.distcp' (100 bytes)"),
    "nemo1_truncated.nemo": (3, ".", "Truncated input file"),
    "nemo1_no_model_config.nemo": (3, ".", "no model_config.yaml"),
    "nemo1_path_traversal.nemo": (3, ".", "member name '../escape.txt' escapes the archive"),
    "nemo1_gzip_truncated.nemo": (3, ".", "truncated gzip input"),
    "nemo1_no_weights.nemo": (3, ".", "neither model_weights/ nor model_weights.ckpt"),
    "nemo1_yaml_zero_heads.nemo": (3, ".", "model_config.yaml': model config lacks "
                                           "num_attention_heads"),
    "nemo1_metadata_truncated.nemo": (3, ".", "model_weights/.metadata': opcode"),
    "nemo_model_yaml_bad_utf8": (3, "context/model.yaml", "line 10: not valid UTF-8 (byte 0xff"),
    "meg_run_config_bad_utf8": (3, RUNCFG, "line 9: not valid UTF-8 (byte 0xc0"),
    "nemo1_yaml_bad_utf8.nemo": (3, ".", "model_config.yaml': line 20: not valid UTF-8 "
                                         "(byte 0x80"),
}


def readme(rows):
    out = ["# Bad-input corpus",
           "",
           "Generated by `make_corpus.py` (standard library and the built tool; rerun it after",
           "editing the table there, then commit `cases/`, `expected.tsv` and this file). Every",
           "case is a tiny Qwen3 checkpoint (1 layer, hidden 16) with exactly one defect, as a",
           "Hugging Face folder, or converted by the tool to NeMo 2, Megatron or NeMo 1 first; or",
           "a single file.",
           "`tests/cli/test_bad_inputs.sh` runs `lmsurgeon inspect` and `lmsurgeon convert` on each",
           "and expects: the exit code below (3 = malformed or unsupported input), exactly one line",
           "on stderr naming the offending file (`.` = the case path itself) and containing the",
           "expected text, nothing on stdout (one JSON object with `ok: false` under `--json`), and",
           "no output directory left behind.",
           "",
           "| case | defect | exit | names | message contains |",
           "|---|---|---|---|---|"]
    for name, _, what, code, names, sub in rows:
        out.append("| `%s` | %s | %d | `%s` | %s |" % (name, what, code, names,
                                                      "`%s`" % sub if sub else "(any)"))
    return "\n".join(out) + "\n"


def main():
    if os.path.isdir(CASES_DIR):
        shutil.rmtree(CASES_DIR)
    os.makedirs(CASES_DIR)
    seen = set()
    lines = ["# case\texit\tnames\tmessage substring (generated by make_corpus.py)"]
    for name, build, what, code, names, sub in CASES + new_cases():
        assert name not in seen, name
        seen.add(name)
        build(os.path.join(CASES_DIR, name))
        lines.append("%s\t%d\t%s\t%s" % (name, code, names, sub))
    write(os.path.join(HERE, "expected.tsv"), "\n".join(lines) + "\n")
    write(os.path.join(HERE, "README.md"), readme(CASES + new_cases()))
    write_importance()
    return 0


if __name__ == "__main__":
    sys.exit(main())
