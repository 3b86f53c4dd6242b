"""OpenSimplex noise (Kurt Spencer's 2014 algorithm) in torch, equal to the `opensimplex` 0.4.5 package.

`opensimplex3` follows `opensimplex.internals._noise3` line by line, each `if` turned into a
`torch.where`. 2D noise runs on `lattice2`, the same algorithm as `_noise2` reorganised for speed
(no `torch.where`, the four vertices stacked, gradients read from tables): with opensimplex's hashed
gradients it is `opensimplex2`; with a random gradient per vertex it makes `simplex_noise`'s fields.
"""

from functools import lru_cache

import torch

STRETCH2 = -0.211324865405187  # (1 / sqrt(2 + 1) - 1) / 2
SQUISH2 = 0.366025403784439  # (sqrt(2 + 1) - 1) / 2
STRETCH3 = -1.0 / 6
SQUISH3 = 1.0 / 3
NORM2 = 47.0
NORM3 = 103.0

# opensimplex.constants.GRADIENTS2 / GRADIENTS3 as rows of (gx, gy) and (gx, gy, gz).
GRADIENTS2 = ((5, 2), (2, 5), (-5, 2), (-2, 5), (5, -2), (2, -5), (-5, -2), (-2, -5))
GRADIENTS3 = (
    (-11, 4, 4), (-4, 11, 4), (-4, 4, 11), (11, 4, 4), (4, 11, 4), (4, 4, 11),
    (-11, -4, 4), (-4, -11, 4), (-4, -4, 11), (11, -4, 4), (4, -11, 4), (4, -4, 11),
    (-11, 4, -4), (-4, 11, -4), (-4, 4, -11), (11, 4, -4), (4, 11, -4), (4, 4, -11),
    (-11, -4, -4), (-4, -11, -4), (-4, -4, -11), (11, -4, -4), (4, -11, -4), (4, -4, -11),
)  # fmt: skip

_MASK64 = (1 << 64) - 1


def _wrap64(value: int) -> int:
    # opensimplex keeps its seed in a signed 64-bit integer (ctypes.c_int64).
    value &= _MASK64
    return value - (1 << 64) if value >= 1 << 63 else value


@lru_cache(maxsize=64)
def _permutation(seed: int) -> tuple[int, ...]:
    """The permutation `opensimplex.internals._init(seed)` makes, as a tuple of 256 ints."""
    source = list(range(256))
    perm = [0] * 256
    for _ in range(3):
        seed = _wrap64(seed * 6364136223846793005 + 1442695040888963407)
    for i in range(255, -1, -1):
        seed = _wrap64(seed * 6364136223846793005 + 1442695040888963407)
        r = (seed + 31) % (i + 1)  # Python's % is already non-negative here
        perm[i] = source[r]
        source[r] = source[i]
    return tuple(perm)


def permutation(seed: int, device=None) -> torch.Tensor:
    """The 256-entry permutation table of `opensimplex.seed(seed)` as a LongTensor."""
    return torch.tensor(_permutation(int(seed)), dtype=torch.long, device=device)


def _as_float64(*coords):
    tensors = [torch.as_tensor(c) for c in coords]
    device = next((t.device for t in tensors if t.device.type != "cpu"), tensors[0].device)
    # MPS has no float64; it is the only common backend where we have to compute in float32.
    dtype = torch.float32 if device.type == "mps" else torch.float64
    tensors = torch.broadcast_tensors(*[t.to(device=device, dtype=dtype) for t in tensors])
    return tensors, device


def _attenuated(dx, dy, *rest):
    attn = 2 - dx * dx - dy * dy
    for d in rest:
        attn = attn - d * d
    attn = attn.clamp_min(0)  # vertices outside the kernel radius contribute exactly 0
    attn = attn * attn
    return attn * attn


# ---------------------------------------------------------------------------------------------
# 2D


def lattice2(x, y, grad_x, grad_y, key_base, row: int, wrap: bool = False) -> torch.Tensor:
    """`_noise2` for many points, with the vertex gradients read from tables.

    The gradient of lattice vertex (i, j) is `grad_x[k], grad_y[k]` with `k = key_base + i * row + j`
    (with `wrap`, i and j are taken modulo 256 first, as opensimplex's hash does, and shifted by one
    so that the vertices at -1 and 256..258 have rows of their own). `x`, `y` and `key_base` broadcast
    together; a (F, 1, W) `x` with a (F, H, 1) `y` makes F grids of noise at little extra cost.

    The four vertices of a point (two of its triangle, the third corner, the extra vertex) are
    stacked so that every operation runs once over all of them: this is what makes eager torch fast.
    """
    xs = x * (1 + STRETCH2) + y * STRETCH2
    ys = y * (1 + STRETCH2) + x * STRETCH2
    xsb, ysb = torch.floor(xs), torch.floor(ys)
    xins, yins = xs.sub_(xsb), ys.sub_(ysb)
    in_sum = xins + yins
    b = torch.sub(in_sum, 1).ceil_()  # 0: the triangle at (0,0) (in_sum <= 1), 1: the one at (1,1)
    shape = xins.shape

    # The extra vertex. Reflecting the (1,1) triangle onto the (0,0) one (u, v = |xins - b|,
    # |yins - b|), it lies across the diagonal edge when 1 - u - v > min(u, v), else opposite it.
    u = (xins - b).abs_()
    v = (yins - b).abs_()
    far = torch.minimum(u, v).add_(u).add_(v).sub_(1).sign_().add_(1).mul_(0.5).ceil_()
    # Across the edge: (1,-1) from the corner (b,b) where xins > yins, else (-1,1) (ties too).
    side = (xins - yins).sign_().sub_(0.5).sign_()
    across = b.mul(-2).add_(1)  # opposite: (1,1) from (0,0), (-1,-1) from (1,1)
    ox = (across - side).mul_(far).add_(side).add_(b)
    oy = (across + side).mul_(far).sub_(side).add_(b)

    # Rows: (1,0), (0,1), (b,b), (ox,oy). (dx, dy) to vertex o is d0 - o - (o_x + o_y) * SQUISH2,
    # and d0 = ins + in_sum * SQUISH2 undoes the stretch.
    d = torch.empty((2, 4) + shape, dtype=xins.dtype, device=xins.device)
    dx0, dy0 = torch.add(xins, in_sum, alpha=SQUISH2), torch.add(yins, in_sum, alpha=SQUISH2)
    torch.sub(dx0, 1 + SQUISH2, out=d[0, 0])
    torch.sub(dy0, SQUISH2, out=d[1, 0])
    torch.sub(dx0, SQUISH2, out=d[0, 1])
    torch.sub(dy0, 1 + SQUISH2, out=d[1, 1])
    torch.sub(dx0, b, alpha=1 + 2 * SQUISH2, out=d[0, 2])
    torch.sub(dy0, b, alpha=1 + 2 * SQUISH2, out=d[1, 2])
    shift = (ox + oy).mul_(SQUISH2)
    torch.sub(dx0, ox, out=d[0, 3]).sub_(shift)
    torch.sub(dy0, oy, out=d[1, 3]).sub_(shift)

    if wrap:
        xsb, ysb = xsb.remainder_(256).add_(1), ysb.remainder_(256).add_(1)
    buffer = torch.empty((4,) + shape, dtype=xins.dtype, device=xins.device)
    origin = torch.add(ysb, xsb, alpha=row).add_(key_base)
    torch.add(origin, row, out=buffer[0])
    torch.add(origin, 1, out=buffer[1])
    torch.add(origin, b, alpha=row + 1, out=buffer[2])
    torch.add(origin, oy, out=buffer[3]).add_(ox, alpha=row)
    keys = buffer.view(-1).to(torch.int32 if buffer.numel() < 2**31 else torch.long)

    dot = grad_x.index_select(0, keys).view_as(d[0]).mul_(d[0])
    dot.addcmul_(grad_y.index_select(0, keys).view_as(d[0]), d[1])
    attn = torch.mul(d[0], d[0], out=buffer)  # reuses the keys' memory: fewer fresh pages to touch
    attn.addcmul_(d[1], d[1]).sub_(2).clamp_max_(0).square_().square_()  # (2 - |d|^2)_+^4
    return attn.mul_(dot).sum(0).div_(NORM2)


def gradient_tables2(perm: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """opensimplex's 2D gradients of the vertices -1..258 x -1..258 for `lattice2(..., wrap=True)`."""
    index = torch.arange(-1, 259, device=perm.device) & 0xFF
    hashed = perm[(perm[index][:, None] + index[None, :]) & 0xFF]
    grads = torch.tensor(GRADIENTS2, dtype=dtype, device=perm.device)[(hashed & 0x0E) >> 1]
    return grads[..., 0].reshape(-1), grads[..., 1].reshape(-1)


WRAP_ROW = 260  # rows of the tables of gradient_tables2


def opensimplex2(x, y, seed: int = 3) -> torch.Tensor:
    """`opensimplex.noise2(x, y)` after `opensimplex.seed(seed)`, for tensors of coordinates.

    Computed in float64 (float32 on MPS); the result has the broadcast shape of `x` and `y`.
    """
    (x, y), device = _as_float64(x, y)
    grad_x, grad_y = gradient_tables2(permutation(seed, device), x.dtype)
    return lattice2(x, y, grad_x, grad_y, 0, WRAP_ROW, wrap=True)


# ---------------------------------------------------------------------------------------------
# 3D


def _bits(point, bit):
    return (point & bit) != 0


def _ext3_low(xins, yins, zins, in_sum):
    """Extra vertices (offsets from the cell origin) inside the tetrahedron at (0,0,0)."""
    a_point = torch.full_like(xins, 1, dtype=torch.long)
    b_point = torch.full_like(xins, 2, dtype=torch.long)
    a_score, b_score = xins, yins
    take_b = (a_score >= b_score) & (zins > b_score)
    take_a = ~take_b & (a_score < b_score) & (zins > a_score)
    b_score, b_point = torch.where(take_b, zins, b_score), torch.where(take_b, 4, b_point)
    a_score, a_point = torch.where(take_a, zins, a_score), torch.where(take_a, 4, a_point)
    wins = 1 - in_sum
    origin_close = (wins > a_score) | (wins > b_score)
    # (0,0,0) is one of the two closest vertices: c is the other one.
    c = torch.where(b_score > a_score, b_point, a_point)
    cx, cy, cz = _bits(c, 1), _bits(c, 2), _bits(c, 4)
    e0 = (torch.where(cx, 1, -1), torch.where(cy, 1, torch.where(cx, -1, 0)), torch.where(cz, 1, 0))
    e1 = (torch.where(cx, 1, 0), torch.where(cy, 1, torch.where(cx, 0, -1)), torch.where(cz, 1, -1))
    # Otherwise the two extra vertices come from the two closest ones.
    c = a_point | b_point
    cx, cy, cz = _bits(c, 1), _bits(c, 2), _bits(c, 4)
    f0 = (cx.long(), cy.long(), cz.long())
    f1 = (torch.where(cx, 1, -1), torch.where(cy, 1, -1), torch.where(cz, 1, -1))
    pick = [torch.where(origin_close, e, f) for e, f in zip(e0 + e1, f0 + f1)]
    return pick[:3], pick[3:]


def _ext3_high(xins, yins, zins, in_sum):
    """Extra vertices inside the tetrahedron at (1,1,1)."""
    a_point = torch.full_like(xins, 6, dtype=torch.long)
    b_point = torch.full_like(xins, 5, dtype=torch.long)
    a_score, b_score = xins, yins
    take_b = (a_score <= b_score) & (zins < b_score)
    take_a = ~take_b & (a_score > b_score) & (zins < a_score)
    b_score, b_point = torch.where(take_b, zins, b_score), torch.where(take_b, 3, b_point)
    a_score, a_point = torch.where(take_a, zins, a_score), torch.where(take_a, 3, a_point)
    wins = 3 - in_sum
    corner_close = (wins < a_score) | (wins < b_score)
    c = torch.where(b_score < a_score, b_point, a_point)
    cx, cy, cz = _bits(c, 1), _bits(c, 2), _bits(c, 4)
    e0 = (torch.where(cx, 2, 0), torch.where(cy, torch.where(cx, 1, 2), 0), torch.where(cz, 1, 0))
    e1 = (torch.where(cx, 1, 0), torch.where(cy, torch.where(cx, 2, 1), 0), torch.where(cz, 2, 0))
    c = a_point & b_point
    cx, cy, cz = _bits(c, 1), _bits(c, 2), _bits(c, 4)
    f0 = (cx.long(), cy.long(), cz.long())
    f1 = (2 * cx.long(), 2 * cy.long(), 2 * cz.long())
    pick = [torch.where(corner_close, e, f) for e, f in zip(e0 + e1, f0 + f1)]
    return pick[:3], pick[3:]


def _permutation_of_112(c):
    """(-1,1,1), (1,-1,1) or (1,1,-1): -1 on the first axis missing from bit set c."""
    no_x = ~_bits(c, 1)
    no_y = ~no_x & ~_bits(c, 2)
    no_z = ~no_x & ~no_y
    return torch.where(no_x, -1, 1), torch.where(no_y, -1, 1), torch.where(no_z, -1, 1)


def _axis_times_two(c):
    """(2,0,0), (0,2,0) or (0,0,2): 2 on the first axis in bit set c."""
    on_x = _bits(c, 1)
    on_y = ~on_x & _bits(c, 2)
    on_z = ~on_x & ~on_y
    return 2 * on_x.long(), 2 * on_y.long(), 2 * on_z.long()


def _ext3_middle(xins, yins, zins):
    """Extra vertices inside the octahedron between the two tetrahedra."""
    p1, p2, p3 = xins + yins, xins + zins, yins + zins
    a_far, b_far = p1 > 1, p2 > 1
    a_score = torch.where(a_far, p1 - 1, 1 - p1)
    b_score = torch.where(b_far, p2 - 1, 1 - p2)
    a_point = torch.where(a_far, 3, 4)
    b_point = torch.where(b_far, 5, 2)
    # The closer of (1,0,0) and (0,1,1) replaces the further of the two above, if closer.
    p3_far = p3 > 1
    score = torch.where(p3_far, p3 - 1, 1 - p3)
    replace_a = (a_score <= b_score) & (a_score < score)
    replace_b = ~replace_a & (a_score > b_score) & (b_score < score)
    new_point = torch.where(p3_far, 6, 1)
    a_point, a_far = torch.where(replace_a, new_point, a_point), torch.where(replace_a, p3_far, a_far)
    b_point, b_far = torch.where(replace_b, new_point, b_point), torch.where(replace_b, p3_far, b_far)

    zero = torch.zeros_like(a_point)
    # Both on the (1,1,1) side: (1,1,1) and twice the shared axis.
    both_far0 = (zero + 1, zero + 1, zero + 1)
    both_far1 = _axis_times_two(a_point & b_point)
    # Both on the (0,0,0) side: (0,0,0) and a permutation of (1,1,-1) on the omitted axis.
    both_near0 = (zero, zero, zero)
    both_near1 = _permutation_of_112(a_point | b_point)
    # One on each side.
    c1 = torch.where(a_far, a_point, b_point)
    c2 = torch.where(a_far, b_point, a_point)
    split0 = _permutation_of_112(c1)
    split1 = _axis_times_two(c2)

    same = a_far == b_far
    out = []
    for far, near, split in zip(both_far0 + both_far1, both_near0 + both_near1, split0 + split1):
        out.append(torch.where(same, torch.where(a_far, far, near), split))
    return out[:3], out[3:]


def opensimplex3(x, y, z, seed: int = 3) -> torch.Tensor:
    """`opensimplex.noise3(x, y, z)` after `opensimplex.seed(seed)`, for tensors of coordinates.

    Computed in float64 (float32 on MPS); the result has the broadcast shape of `x`, `y` and `z`.
    """
    (x, y, z), device = _as_float64(x, y, z)
    perm = permutation(seed, device)
    grads = torch.tensor(GRADIENTS3, dtype=x.dtype, device=device)

    stretch = (x + y + z) * STRETCH3
    xs, ys, zs = x + stretch, y + stretch, z + stretch
    xsb, ysb, zsb = torch.floor(xs), torch.floor(ys), torch.floor(zs)
    squish = (xsb + ysb + zsb) * SQUISH3
    dx0, dy0, dz0 = x - (xsb + squish), y - (ysb + squish), z - (zsb + squish)
    xins, yins, zins = xs - xsb, ys - ysb, zs - zsb
    in_sum = xins + yins + zins
    low, high = in_sum <= 1, in_sum >= 2

    lo0, lo1 = _ext3_low(xins, yins, zins, in_sum)
    hi0, hi1 = _ext3_high(xins, yins, zins, in_sum)
    mid0, mid1 = _ext3_middle(xins, yins, zins)
    ext0 = [torch.where(low, a, torch.where(high, b, c)) for a, b, c in zip(lo0, hi0, mid0)]
    ext1 = [torch.where(low, a, torch.where(high, b, c)) for a, b, c in zip(lo1, hi1, mid1)]

    xi, yi, zi = xsb.long(), ysb.long(), zsb.long()

    def contribution(ox, oy, oz, include=None):
        index = perm[(perm[(perm[(xi + ox) & 0xFF] + yi + oy) & 0xFF] + zi + oz) & 0xFF] % 24
        if torch.is_tensor(ox):  # integer offsets would make the arithmetic below float32
            ox, oy, oz = ox.to(x.dtype), oy.to(x.dtype), oz.to(x.dtype)
        shift = (ox + oy + oz) * SQUISH3
        dx, dy, dz = dx0 - ox - shift, dy0 - oy - shift, dz0 - oz - shift
        g = grads[index]
        value = _attenuated(dx, dy, dz) * (g[..., 0] * dx + g[..., 1] * dy + g[..., 2] * dz)
        return value if include is None else torch.where(include, value, 0)

    # Each region sums its own corners of the unit cube plus its two extra vertices.
    value = contribution(0, 0, 0, low) + contribution(1, 1, 1, high)
    for corner in ((1, 0, 0), (0, 1, 0), (0, 0, 1)):
        value = value + contribution(*corner, ~high)
    for corner in ((1, 1, 0), (1, 0, 1), (0, 1, 1)):
        value = value + contribution(*corner, ~low)
    value = value + contribution(*ext0) + contribution(*ext1)
    return value / NORM3
