"""The hierarchical multi-view distribution (docs/theory.md, "The model in brief"), vectorised and seeded.

A tree of ``L`` levels below the root (level 1 = superclasses, level ``L`` = leaves); every node
owns ``views`` orthonormal dictionary features. A sample of leaf ``u`` carries, in its own block
of ``s`` patches per view, the features of every node on the root-to-``u`` path; the remaining
patches carry feature noise ``gamma * v'`` (``v'`` a random dictionary feature); every patch gets
Gaussian noise. A *hard* sample (target level ``t``) has the features of its levels ``1..t``
weakened to ``U(hard_strength)`` (0 = missing) plus optional extra noise.

Everything is drawn from an explicit ``torch.Generator`` in a fixed order, so the same seed gives
bit-identical tensors on CPU; :meth:`HierarchicalMultiView.stream` draws in chunks so memory does
not grow with the number of samples.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import numpy as np
import torch

from granularity.errors import param_error
from granularity.theory.config import DataConfig
from granularity.utils.io import write_json, write_npz

_SEED_LIMIT = 2**63
_MT_WORDS = 624  # mt19937 state words
_MT_HEADER = 24  # torch's CPU state: initial seed (u64), left (i32), seeded (i32), next (u64), then the words (u64 each)


def derive_seeds(seed: int, n: int) -> list[int]:
    """``n`` independent 63-bit seeds from one integer (NumPy SeedSequence), for the generators
    of the dictionary, training data, test data, initialisation and batch order."""
    states = np.random.SeedSequence(seed).generate_state(n, dtype=np.uint64)
    return [int(s) & ((1 << 63) - 1) for s in states]


def _mt19937_state(seed: int, key: np.ndarray, pos: int) -> torch.Tensor:
    """Torch's CPU generator state for an mt19937 with the given 624-word ``key`` about to emit
    word ``pos`` (NumPy's convention; ``pos = 624``: twist first), recording ``seed``."""
    raw = torch.Generator().get_state().numpy().copy()
    raw[0:8] = np.array([seed], "<u8").view(np.uint8)  # initial seed
    # torch emits state[next] after decrementing ``left``, twisting when it reaches 0
    raw[8:16] = np.array([_MT_WORDS - pos + 1, 1], "<i4").view(np.uint8)  # left, seeded
    raw[16:24] = np.array([pos % _MT_WORDS], "<u8").view(np.uint8)  # next (reset by a twist anyway)
    raw[_MT_HEADER : _MT_HEADER + 8 * _MT_WORDS] = np.asarray(key, "<u8").view(np.uint8)
    return torch.from_numpy(raw)


@cache
def _check_state_layout() -> None:
    """Refuse (rather than silently mis-seed) on a torch whose CPU state layout is unknown:
    rebuild torch's own state for a 32-bit seed from the standard mt19937 key and compare."""
    _, key, pos, *_ = np.random.RandomState(12345).get_state()  # init_genrand, as torch's manual_seed
    if not torch.equal(_mt19937_state(12345, key, pos), torch.Generator().manual_seed(12345).get_state()):
        raise RuntimeError(f"torch {torch.__version__} stores its CPU generator state in an unknown layout; "
                           "seeds >= 2**32 cannot be honoured")


def generator(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A ``torch.Generator`` whose stream depends on every bit of ``seed`` (0 <= seed < 2**63).

    Torch's CPU generator (mt19937) keeps only the low 32 bits of ``manual_seed``, so 2**40 + 5
    would give the stream of 5. Seeds below 2**32 keep torch's own stream (every stored result
    depends on it); a larger seed gets the state, and so the 32-bit word stream, of NumPy's
    ``MT19937(seed)``, derived from the whole seed through a SeedSequence. CUDA generators
    (Philox) take 64-bit seeds as they are.
    """
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < _SEED_LIMIT:
        raise param_error("seed", "an integer with 0 <= seed < 2**63", seed)
    seed = int(seed)
    g = torch.Generator(device=device)
    if seed < 2**32 or g.device.type != "cpu":
        g.manual_seed(seed)
        return g
    _check_state_layout()
    state = np.random.MT19937(seed).state["state"]
    g.set_state(_mt19937_state(seed, state["key"], state["pos"]))
    return g


@dataclass
class Samples:
    """A batch of samples with the full record of what each one carries.

    Attributes
    ----------
    x : (n, P, d) float32 inputs.
    labels : (n, L) int64, node index of the sample at every level (column l-1 = level l).
    hard : (n,) bool.
    block_features : (n, B) int64 dictionary index carried by each feature block.
    block_patches : (n, B, s) int64 patch positions of each block.
    block_strength : (n, B, s) float32 coefficient of the block's feature in each of its patches.
    noise_features : (n, P) int64 feature used as feature noise in each patch (-1 for block patches).
    """

    x: torch.Tensor
    labels: torch.Tensor
    hard: torch.Tensor
    block_features: torch.Tensor
    block_patches: torch.Tensor
    block_strength: torch.Tensor
    noise_features: torch.Tensor

    def __len__(self) -> int:
        return self.x.shape[0]

    def label(self, level: int) -> torch.Tensor:
        return self.labels[:, level - 1]


@dataclass
class Tree:
    """Node bookkeeping of the hierarchy: nodes per level, parents, feature ids."""

    nodes_per_level: list[int]
    parents: list[torch.Tensor]  # parents[l] (nodes at level l+2,) -> index at level l+1
    feature_base: list[int]  # first dictionary index of each level's features
    views: list[int]  # features per node, per level
    k_list: list[int] = field(default_factory=list)

    @property
    def levels(self) -> int:
        return len(self.nodes_per_level)

    def ancestor_map(self, src_level: int, dst_level: int) -> torch.Tensor:
        """(nodes at src_level,) -> index of its ancestor at dst_level (dst <= src)."""
        if dst_level > src_level:
            raise ValueError("dst_level must not be finer than src_level")
        idx = torch.arange(self.nodes_per_level[src_level - 1])
        for lvl in range(src_level, dst_level, -1):
            idx = self.parents[lvl - 2][idx]
        return idx

    def feature_level(self) -> torch.Tensor:
        """(M,) level of each dictionary feature."""
        out = []
        for lvl, (n, v) in enumerate(zip(self.nodes_per_level, self.views), start=1):
            out.append(torch.full((n * v,), lvl, dtype=torch.long))
        return torch.cat(out)

    def feature_node(self) -> torch.Tensor:
        """(M,) node index (within its level) of each dictionary feature."""
        return torch.cat([torch.arange(n).repeat_interleave(v) for n, v in zip(self.nodes_per_level, self.views)])


def build_tree(cfg: DataConfig) -> Tree:
    k = cfg.k_list
    counts = cfg.nodes_per_level
    parents = [torch.repeat_interleave(torch.arange(cfg.K), torch.tensor(k))]
    for b, n_parent in zip(cfg.deeper, counts[1:-1] if cfg.deeper else []):
        parents.append(torch.arange(n_parent).repeat_interleave(b))
    views = [cfg.views_common] + [cfg.views_fine] * (cfg.levels - 1)
    base, acc = [], 0
    for n, v in zip(counts, views):
        base.append(acc)
        acc += n * v
    return Tree(counts, parents, base, views, k)


class HierarchicalMultiView:
    """Sampler of the hierarchical multi-view distribution for one seed.

    Parameters
    ----------
    cfg : DataConfig
    seed : int
        Seeds the dictionary (a random orthogonal matrix, QR of a Gaussian).

    Examples
    --------
    >>> from granularity.theory import DataConfig, HierarchicalMultiView
    >>> dist = HierarchicalMultiView(DataConfig(d=64, k=4), seed=0)
    >>> batch = dist.sample(8, generator(1))
    >>> tuple(batch.x.shape)
    (8, 16, 64)
    """

    def __init__(self, cfg: DataConfig, seed: int = 0):
        self.cfg = cfg
        self.tree = build_tree(cfg)
        self.M = cfg.num_features
        g = generator(seed)
        if cfg.dictionary == "standard":
            self.dictionary = torch.eye(cfg.d)[: self.M].clone()
        else:
            gauss = torch.randn(cfg.d, cfg.d, generator=g, dtype=torch.float64)
            q, r = torch.linalg.qr(gauss)
            q = q * torch.sign(torch.diagonal(r))  # unique (Haar) orthogonal matrix
            self.dictionary = q[:, : self.M].T.contiguous().float()  # (M, d), orthonormal rows
        kmax = max(cfg.k_list)
        w = torch.zeros(cfg.K, kmax, dtype=torch.float64)
        for y, ky in enumerate(cfg.k_list):
            ranks = torch.arange(1, ky + 1, dtype=torch.float64)
            w[y, :ky] = ranks ** (-cfg.tail_exponent)  # Zipf; exponent 0 = uniform
        self.sub_weights = w / w.sum(1, keepdim=True)  # (K, kmax)
        self.sub_offset = torch.tensor([0] + list(np.cumsum(cfg.k_list)[:-1]), dtype=torch.long)

    # ------------------------------------------------------------------------------------
    def leaf_probabilities(self) -> torch.Tensor:
        """(nodes at level 2,) probability of each subclass."""
        probs = [self.sub_weights[y, :ky] / self.cfg.K for y, ky in enumerate(self.cfg.k_list)]
        return torch.cat(probs)

    def sample(
        self, n: int, gen: torch.Generator, hard: bool | float = False, out: torch.Tensor | None = None
    ) -> Samples:
        """Draw ``n`` samples. ``hard``: False (all easy), True (all hard) or a fraction.
        ``out``: a contiguous float32 (n, P, d) tensor to hold the inputs ``x`` (e.g. one seed's
        slot of a stack over seeds, which then needs no copy); the draws do not depend on it.

        A hard sample loses the features of levels ``1..cfg.hard_level``; an unresolved
        ``hard_level`` (None, a distribution used outside a ``SimConfig``) means level 1.
        """
        cfg, tree = self.cfg, self.tree
        hard_level = 1 if cfg.hard_level is None else cfg.hard_level
        L, P, d, s = cfg.levels, cfg.P, cfg.d, cfg.s
        # 1. labels along the path: superclass uniform, subclass by (Zipf) weights, deeper uniform
        y = torch.randint(cfg.K, (n,), generator=gen)
        j = torch.multinomial(self.sub_weights[y], 1, generator=gen).squeeze(1)
        path = [y, self.sub_offset[y] + j]
        for b in cfg.deeper:
            path.append(path[-1] * b + torch.randint(b, (n,), generator=gen))
        labels = torch.stack(path, 1)  # (n, L)
        # 2. easy / hard
        if isinstance(hard, bool):
            is_hard = torch.full((n,), hard, dtype=torch.bool)
        else:
            is_hard = torch.rand(n, generator=gen) < float(hard)
        # 3. feature blocks: (level, view) in order, each on its own s patches of a permutation
        feats, block_level = [], []
        for lvl in range(1, L + 1):
            v = tree.views[lvl - 1]
            base = tree.feature_base[lvl - 1] + labels[:, lvl - 1] * v
            for view in range(v):
                feats.append(base + view)
                block_level.append(lvl)
        block_features = torch.stack(feats, 1)  # (n, B)
        B = block_features.shape[1]
        perm = torch.argsort(torch.rand(n, P, generator=gen), dim=1)  # (n, P)
        block_patches = perm[:, : B * s].reshape(n, B, s)
        # 4. strengths: easy blocks U(level's range); hard samples' levels <= t get U(hard range)
        lvl_t = torch.tensor(block_level)
        lo = torch.tensor([cfg.common_strength[0] if lv == 1 else cfg.fine_strength[0] for lv in block_level])
        hi = torch.tensor([cfg.common_strength[1] if lv == 1 else cfg.fine_strength[1] for lv in block_level])
        u = torch.rand(n, B, s, generator=gen)
        strength = lo[None, :, None] + (hi - lo)[None, :, None] * u
        weak = is_hard[:, None] & (lvl_t <= hard_level)[None, :]  # (n, B)
        hlo, hhi = cfg.hard_strength
        u_hard = torch.rand(n, B, s, generator=gen)
        strength = torch.where(weak[:, :, None], hlo + (hhi - hlo) * u_hard, strength)
        # 5. feature noise on the remaining patches
        noise_feat = torch.randint(self.M, (n, P), generator=gen)
        rows = torch.arange(n)[:, None]
        noise_feat[rows, perm[:, : B * s]] = -1
        # 6. every patch carries at most one feature: its index (n, P) and coefficient, and
        # x_p = coefficient * dictionary row. This is exactly the product of the (n, P, M)
        # coefficient tensor with the dictionary (each sum has one non-zero term), without the
        # matrix multiply over M mostly-zero coefficients.
        feat = noise_feat.clone()
        value = torch.where(noise_feat >= 0, cfg.gamma, 0.0)
        bp = block_patches.reshape(n, B * s)
        bf = block_features.repeat_interleave(s, dim=1)  # (n, B*s)
        feat[rows.expand(n, B * s), bp] = bf
        value[rows.expand(n, B * s), bp] = strength.reshape(n, B * s).float()
        if out is not None and (out.shape != (n, P, d) or out.dtype != torch.float32 or not out.is_contiguous()):
            raise ValueError(f"out must be a contiguous float32 tensor of shape {(n, P, d)}, not {tuple(out.shape)}")
        rows_out = None if out is None else out.view(n * P, d)
        x = torch.index_select(self.dictionary, 0, feat.clamp_min(0).reshape(-1), out=rows_out).view(n, P, d)
        x.mul_(value[..., None])
        # 7. Gaussian noise everywhere, plus the hard noise on the weakened patches
        x += torch.randn(n, P, d, generator=gen).mul_(cfg.noise_std)
        if cfg.hard_noise > 0:
            extra = cfg.hard_noise * torch.randn(n, B, s, d, generator=gen)
            extra = extra * weak[:, :, None, None]
            x[rows.expand(n, B * s), bp] += extra.reshape(n, B * s, d)
        return Samples(x, labels, is_hard, block_features, block_patches, strength.float(), noise_feat)

    def stream(
        self, n: int, gen: torch.Generator, hard: bool | float = False, chunk: int = 4096
    ) -> Iterator[Samples]:
        """Draw ``n`` samples in chunks of at most ``chunk`` (memory independent of ``n``)."""
        done = 0
        while done < n:
            size = min(chunk, n - done)
            yield self.sample(size, gen, hard)
            done += size

    def save(self, path: str | Path, samples: Samples) -> None:
        """Save a data set with its dictionary and the per-sample records (``path``, which must
        end in ``.npz``) plus the config (the same name ending in ``.json``), so that every
        metric can be recomputed later."""
        path = Path(path)
        if path.suffix != ".npz":  # any other name could be the sidecar's own (ds.json) or be renamed by NumPy
            raise param_error("path", "a file name ending in .npz (the config goes beside it as .json)", str(path))
        write_npz(
            path,
            dictionary=self.dictionary.numpy(),
            x=samples.x.numpy(),
            labels=samples.labels.numpy(),
            hard=samples.hard.numpy(),
            block_features=samples.block_features.numpy(),
            block_patches=samples.block_patches.numpy(),
            block_strength=samples.block_strength.numpy(),
            noise_features=samples.noise_features.numpy(),
        )
        write_json(path.with_suffix(".json"), {"data": self.cfg.to_dict(), "num_features": self.M})
