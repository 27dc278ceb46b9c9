"""Golden numbers for the least-squares refit of tests/unit/test_recon.c, from numpy's lstsq.

The fixture layer: activations A (N tokens x n inputs), weight W (rows x n) and bias b, all
given by closed formulas that the C test evaluates too; the kept columns K. The refit of W's
kept columns is the least-squares solution of A_K X^T = A W^T (and, with the bias, of
[A_K, 1] [X, b']^T = A W^T + b), which lstsq computes by SVD, independently of the normal
equations the C code solves. Prints the C arrays the test holds.

    python3 tests/tools/recon_golden.py
"""
import numpy as np

N, n, rows = 40, 6, 3
K = [0, 2, 5]


def activation(t, i):
    return np.sin(0.7 * t + 1.3 * i) + 0.1 * i + np.cos(0.3 * t * i)


def weight(r, i):
    return 0.5 - 0.1 * r + 0.05 * i * i - 0.2 * np.cos(r + i)


def bias(r):
    return 0.3 * r - 0.1


A = np.array([[activation(t, i) for i in range(n)] for t in range(N)], dtype=np.float64)
W = np.array([[weight(r, i) for i in range(n)] for r in range(rows)], dtype=np.float64)
b = np.array([bias(r) for r in range(rows)], dtype=np.float64)

plain, *_ = np.linalg.lstsq(A[:, K], A @ W.T, rcond=None)
ext = np.hstack([A[:, K], np.ones((N, 1))])
with_bias, *_ = np.linalg.lstsq(ext, A @ W.T + b, rcond=None)


def c_array(name, values):
    body = ", ".join(f"{v:.17g}" for v in values)
    return f"static const double {name}[] = {{{body}}};"


print(c_array("golden_plain", plain.T.ravel()))
print(c_array("golden_bias_w", with_bias[:len(K)].T.ravel()))
print(c_array("golden_bias_b", with_bias[len(K)]))
