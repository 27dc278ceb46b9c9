"""An independent reimplementation of lmsurgeon's row order (README "Row order"), in plain Python.

It follows the README's description step by step, not the C code: the rows lmsurgeon reads for
distillation (`distill --dump-rows`) and calibration are checked against it, and it writes the
golden file tests/golden/sampler_order.txt that the unit tests compare the C sampler with.

    python sampler_reference.py golden > tests/golden/sampler_order.txt
    python sampler_reference.py rows PREFIX --seq-length S --rows N --seed X [--split W,W,W] OUT
        (OUT: int32, seq_length + 1 ids per row, the layout of `distill --dump-rows`)
    python sampler_reference.py calib-rows DATA --seq-length S --from A --to B --seed X OUT
        (calibration rows [A, B): every non-overlapping window of S tokens of the whole data,
        documents and windows shuffled; DATA a Megatron prefix or a raw .u16/.i32 id file;
        OUT: int32, S ids per row, a raw .i32 id file)

Only the standard library: it runs wherever the CLI tests run.
"""
import argparse
import array
import re
import struct
import sys

MASK = (1 << 64) - 1
GOLDEN_STEP = 0x9E3779B97F4A7C15


class SplitMix64:
    """splitmix64; the state starts at the first output of a generator seeded with the seed."""

    def __init__(self, seed):
        self.state = seed & MASK
        self.state = self.next()

    def next(self):
        self.state = (self.state + GOLDEN_STEP) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def below(self, n):
        """Uniform in [0, n): draws below the largest multiple of n that fits are kept."""
        limit = MASK - MASK % n
        while True:
            r = self.next()
            if r < limit:
                return r % n

    def shuffle(self, a, lo, hi):
        """Fisher-Yates over a[lo:hi], from the last entry down (numpy's order)."""
        for i in range(hi - lo - 1, 0, -1):
            j = self.below(i + 1)
            a[lo + i], a[lo + j] = a[lo + j], a[lo + i]


def samples_in(tokens, length, stride):
    """Windows [j stride, j stride + length) that fit in a stream of `tokens` tokens."""
    return (tokens - length) // stride + 1 if tokens >= length else 0


def plan(epoch_tokens, n_rows, length, stride):
    """Epochs, samples and whether the final epoch is shuffled apart (Megatron's rules)."""
    need = (n_rows - 1) * stride + length
    epochs = -(-need // epoch_tokens)
    samples = samples_in(epochs * epoch_tokens, length, stride)
    separate = False
    before_final = 0
    if epochs > 1:
        before_final = samples_in((epochs - 1) * epoch_tokens, length, stride)
        per_epoch = samples_in(epoch_tokens, length, stride)
        separate = n_rows - before_final < int(0.80 * per_epoch)
    return epochs, samples, separate, before_final


class Sampler:
    """Rows of `length` tokens at `stride` over documents `docs` (ids) of `doc_lengths`."""

    def __init__(self, doc_lengths, docs, n_rows, length, stride, seed, shuffle=True):
        self.doc_lengths = doc_lengths
        self.length, self.stride = length, stride
        T = sum(doc_lengths[d] for d in docs)
        self.epochs, self.samples, self.separate, before = plan(T, n_rows, length, stride)
        m = len(docs)
        rng = SplitMix64(seed)
        self.order = list(docs) * self.epochs
        if shuffle:
            if self.separate:
                rng.shuffle(self.order, 0, (self.epochs - 1) * m)
                rng.shuffle(self.order, (self.epochs - 1) * m, self.epochs * m)
            else:
                rng.shuffle(self.order, 0, self.epochs * m)
        self.starts = [0]
        for d in self.order:
            self.starts.append(self.starts[-1] + doc_lengths[d])
        self.perm = list(range(self.samples))
        if shuffle:
            if self.separate:
                rng.shuffle(self.perm, 0, before)
                rng.shuffle(self.perm, before, self.samples)
            else:
                rng.shuffle(self.perm, 0, self.samples)
        self.n_rows = n_rows

    def pieces(self, k):
        """Row k as (document, offset, count) pieces in reading order."""
        pos, need, out = self.perm[k] * self.stride, self.length, []
        i = 0
        while need:
            while self.starts[i + 1] <= pos:
                i += 1
            d = self.order[i]
            off = pos - self.starts[i]
            take = min(self.doc_lengths[d] - off, need)
            out.append((d, off, take))
            pos += take
            need -= take
        return out


def split_ranges(spec, n_docs):
    """megatron-core's --split: weights normalised, cumulative round-half-even counts."""
    w = [float(x) for x in re.findall(r"[.0-9]+", spec)] + [0.0, 0.0]
    w = w[:3]
    total = sum(w)
    idx = [0]
    for x in w:
        idx.append(idx[-1] + int(round(x / total * n_docs)))
    diff = idx[-1] - n_docs
    idx = [idx[0]] + [v - diff for v in idx[1:]]
    return [(max(idx[i], 0), max(idx[i + 1], max(idx[i], 0))) for i in range(3)]


def read_dataset(prefix):
    """Document lengths and the token stream of a Megatron PREFIX.idx/.bin."""
    with open(prefix + ".idx", "rb") as f:
        head = f.read(34)
        dtype, n_seq, n_doc = head[17], *struct.unpack("<QQ", head[18:34])
        lengths = struct.unpack(f"<{n_seq}i", f.read(4 * n_seq))
        f.read(8 * n_seq)
        doc_idx = struct.unpack(f"<{n_doc}q", f.read(8 * n_doc))
    seq_start = [0]
    for n in lengths:
        seq_start.append(seq_start[-1] + n)
    doc_lengths = [seq_start[doc_idx[d + 1]] - seq_start[doc_idx[d]] for d in range(n_doc - 1)]
    doc_start = [seq_start[doc_idx[d]] for d in range(n_doc - 1)]
    tokens = array.array({4: "i", 8: "H"}[dtype])
    with open(prefix + ".bin", "rb") as f:
        tokens.frombytes(f.read())
    return doc_lengths, doc_start, tokens


def read_data(path):
    """read_dataset, or a raw id file as one document (the whole file)."""
    for ext, code in ((".u16", "H"), (".i32", "i")):
        if path.endswith(ext):
            tokens = array.array(code)
            with open(path, "rb") as f:
                tokens.frombytes(f.read())
            return [len(tokens)], [0], tokens
    return read_dataset(path)


def cmd_calib_rows(args):
    doc_lengths, doc_start, tokens = read_data(args.data)
    S = args.seq_length
    n = sum(doc_lengths) // S
    s = Sampler(doc_lengths, range(len(doc_lengths)), n, S, S, args.seed)
    out = array.array("i")
    for k in range(args.first, args.last):
        for d, off, take in s.pieces(k):
            out.extend(tokens[doc_start[d] + off:doc_start[d] + off + take].tolist())
    with open(args.out, "wb") as f:
        out.tofile(f)


def cmd_rows(args):
    doc_lengths, doc_start, tokens = read_dataset(args.prefix)
    b, e = split_ranges(args.split, len(doc_lengths))[0]
    s = Sampler(doc_lengths, range(b, e), args.rows, args.seq_length + 1, args.seq_length,
                args.seed)
    out = array.array("i")
    for k in range(args.rows):
        for d, off, take in s.pieces(k):
            out.extend(tokens[doc_start[d] + off:doc_start[d] + off + take])
    with open(args.out, "wb") as f:
        out.tofile(f)


# The golden file's dataset: document d has GOLDEN_LENGTHS[d] tokens (some empty), and token ids
# are stream positions, so a row's ids tell where it was read.
GOLDEN_LENGTHS = [(d * 37) % 29 for d in range(40)]
GOLDEN_CASES = [
    # name, first document, end document, rows (or a rule), length, stride, seed, shuffle
    ("one_epoch", 0, 40, 16, 9, 8, 1234, True),
    ("separate_final_epoch", 0, 40, "epoch+3", 9, 8, 1234, True),
    ("merged_final_epoch", 0, 40, "epoch+90%", 9, 8, 1234, True),
    ("three_epochs", 0, 40, "2epochs+2", 9, 8, 99, True),
    ("document_range", 5, 31, 8, 9, 8, 7, True),
    ("calibration", 0, 40, "all", 8, 8, 1234, True),
    ("in_order", 0, 40, 6, 9, 8, 1234, False),
]


def golden_rows(rule, T, length, stride):
    if isinstance(rule, int):
        return rule
    per = samples_in(T, length, stride)
    return {"epoch+3": per + 3, "epoch+90%": per + int(0.9 * per),
            "2epochs+2": samples_in(2 * T, length, stride) + 2,
            "all": T // length}[rule]


def cmd_golden(_args):
    print("# lmsurgeon row order, written by tests/tools/sampler_reference.py golden")
    print("# (README 'Row order'). Token ids are stream positions; a row lists its ids.")
    print("lengths " + " ".join(str(n) for n in GOLDEN_LENGTHS))
    for name, b, e, rule, length, stride, seed, shuffle in GOLDEN_CASES:
        T = sum(GOLDEN_LENGTHS[b:e])
        n = golden_rows(rule, T, length, stride)
        s = Sampler(GOLDEN_LENGTHS, range(b, e), n, length, stride, seed, shuffle)
        print(f"case {name} docs {b} {e} rows {n} length {length} stride {stride} seed {seed} "
              f"shuffle {int(shuffle)} epochs {s.epochs} samples {s.samples} "
              f"separate {int(s.separate)}")
        starts = [sum(GOLDEN_LENGTHS[:d]) for d in range(len(GOLDEN_LENGTHS))]
        for k in range(n):
            ids = []
            for d, off, take in s.pieces(k):
                ids.extend(range(starts[d] + off, starts[d] + off + take))
            print("row " + " ".join(str(i) for i in ids))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("golden").set_defaults(fn=cmd_golden)
    r = sub.add_parser("rows")
    r.add_argument("prefix")
    r.add_argument("out")
    r.add_argument("--seq-length", type=int, required=True)
    r.add_argument("--rows", type=int, required=True)
    r.add_argument("--seed", type=int, default=1234)
    r.add_argument("--split", default="969,30,1")
    r.set_defaults(fn=cmd_rows)
    c = sub.add_parser("calib-rows")
    c.add_argument("data")
    c.add_argument("out")
    c.add_argument("--seq-length", type=int, required=True)
    c.add_argument("--from", dest="first", type=int, required=True)
    c.add_argument("--to", dest="last", type=int, required=True)
    c.add_argument("--seed", type=int, default=1234)
    c.set_defaults(fn=cmd_calib_rows)
    args = p.parse_args()
    args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
