"""Vision Mamba (hustvl/Vim, bimamba "v2", middle class token), module tree and keys as official.

Equivalence notes (see ARCHITECTURE.md): the class token is inserted at index M//2 of the M patch
tokens and read out there; ``pos_embed`` is added after the insertion; the backward branch of
every mixer has its own conv1d_b / x_proj_b / dt_proj_b / A_b_log / D_b and runs in reverse scan
order on the same in_proj output, which equals the official flip / scan / flip; the mixer returns
``out_proj((y_fwd + y_bwd) / 2)``; blocks are pre-norm RMSNorm (eps 1e-5) with an fp32 residual.

Token merging hooks in between blocks through ``self.merger`` (see :mod:`vimstm.merge`), which
receives ``(hidden_states, residual)`` of all tokens and the exact class-token index.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from vimstm.errors import ConfigError
from vimstm.ops.dispatch import add_rmsnorm, bimamba
from vimstm.ops.mixer import MixerParams, padded_rank


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def patch_grid(img_size, patch_size, stride) -> tuple[int, int]:
    """Grid of the patch embedding, or a clear error if the image size does not tile."""
    img, patch = _pair(img_size), _pair(patch_size)
    grid = []
    for s, p in zip(img, patch):
        if s < p:
            raise ConfigError(f"image size {s} is smaller than the patch size {p}")
        if (s - p) % stride:
            lo = s - (s - p) % stride
            raise ConfigError(
                f"image size {s} does not fit the patch grid (patch {p}, stride {stride}): "
                f"(size - patch) must be a multiple of the stride; try {lo} or {lo + stride}"
            )
        grid.append((s - p) // stride + 1)
    return grid[0], grid[1]


class RMSNorm(nn.Module):
    """Residual add + RMSNorm as mamba_ssm's (weight only, no bias, fp32 residual and maths).

    ``norm(x, residual)`` returns ``(rmsnorm(residual + x) * weight`` in x's dtype, the fp32
    sum``); without a residual the sum is ``x`` itself. ``backend`` is a scan backend
    (:func:`vimstm.ops.dispatch.add_rmsnorm` picks the Triton op or PyTorch from it).
    """

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor, residual: Tensor | None = None,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
        return add_rmsnorm(x, residual, self.weight, self.eps, backend)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at eval)."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep


class PatchEmbed(nn.Module):
    """Image to patch tokens through one strided conv (weights stored as ``proj``, a Conv2d).

    Large non-overlapping patches (stride = patch size, ``in_chans * patch**2 >= 256``) run as
    one matrix product over the gathered patches: the same linear map on tensor cores, where
    cuDNN's kernels for 3 input channels do not use them (0.84 of 14.7 ms of a merged vim_tiny
    forward; fp16 inference of vim_tiny/small 2-7% faster on an H100). Small patches keep the
    conv: for 2x2 patches (12 inputs per token) two A/Bs of the vim_tiny_cifar10 training step
    disagreed (each way by 8-10%, BENCHMARKS.md), so no gain is shown there.
    ``dynamic``: accept any image size that tiles the patch grid (the caller resamples the
    position embedding); otherwise only ``img_size``.
    """

    def __init__(self, img_size=224, patch_size=16, stride=16, in_chans=3, embed_dim=192,
                 dynamic: bool = False) -> None:
        super().__init__()
        self.img_size = _pair(img_size)
        self.patch_size = _pair(patch_size)
        self.stride = stride
        self.dynamic = dynamic
        self.grid_size = patch_grid(img_size, patch_size, stride)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=self.patch_size, stride=stride)

    def forward(self, x: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        if (h, w) != self.img_size:
            if not self.dynamic:
                raise ConfigError(
                    f"input image is {h}x{w} but the model expects {self.img_size[0]}x"
                    f"{self.img_size[1]}; resize the input, create the model with img_size={h}, "
                    "or with dynamic_img_size=True"
                )
            patch_grid((h, w), self.patch_size, self.stride)  # a clear error if it does not tile
        ph, pw = self.patch_size
        if self.stride != ph or ph != pw or self.proj.in_channels * ph * pw < 256:
            return self.proj(x).flatten(2).transpose(1, 2)
        dtype = x.dtype
        if torch.is_autocast_enabled(x.device.type):  # cast while gathering: one copy
            dtype = torch.get_autocast_dtype(x.device.type)
        b, c = x.shape[:2]
        gh, gw = h // ph, w // pw
        x = x.reshape(b, c, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        x = x.to(dtype, memory_format=torch.contiguous_format).reshape(b, gh * gw, c * ph * pw)
        return F.linear(x, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


def resample_pos_embed(pos: Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int],
                       antialias: bool = False) -> Tensor:
    """A middle-class-token position embedding (1, M+1, C) resized from ``old_grid`` to
    ``new_grid``.

    The class row sits at index M//2; it is kept as it is, the M patch rows are resized
    bicubically as a grid (``antialias`` when shrinking), and the class row is re-inserted at
    M'//2. Differentiable, so a model can train at a smaller size through it.
    """
    m_old = old_grid[0] * old_grid[1]
    c_old = m_old // 2
    cls_row = pos[:, c_old : c_old + 1]
    patches = torch.cat((pos[:, :c_old], pos[:, c_old + 1 :]), dim=1)
    grid = patches.reshape(1, old_grid[0], old_grid[1], -1).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=new_grid, mode="bicubic", align_corners=False,
                         antialias=antialias)
    patches = grid.permute(0, 2, 3, 1).flatten(1, 2).to(pos.dtype)
    c_new = patches.shape[1] // 2
    return torch.cat((patches[:, :c_new], cls_row, patches[:, c_new:]), dim=1)


@dataclass
class SSMStats:
    """What a mixer records for merging: per-direction B (batch, length, state) and Δ·mean(A).

    Only the parts in the mixer's ``record`` are computed (see :data:`SSM_PARTS`); the others
    are ``None``. ``token_stats`` holds ``(delta_fwd, delta_bwd, log_decay_fwd, log_decay_bwd)``
    stacked as (batch, 4, length) fp32; the per-direction fields are views of it.
    """

    B_fwd: Tensor | None
    B_bwd: Tensor | None
    log_decay_fwd: Tensor | None  # (batch, length): mean over channels of Δ_t · mean_n(A), ≤ 0
    log_decay_bwd: Tensor | None
    delta_fwd: Tensor | None  # (batch, length): Δ averaged over channels
    delta_bwd: Tensor | None
    importance: Tensor | None = None  # (batch, length): mean_d relu(y_fwd + y_bwd), as ToP-ViM
    token_stats: Tensor | None = None  # (batch, 4, length): delta_fwd/bwd, log_decay_fwd/bwd
    # what per-channel Δ is made of (``merge_ref.delta_from_inputs``), on request: the low-rank
    # x_proj part (2, batch, length, rank), dt_proj's weights (2, d_inner, rank) and biases
    dt_low: Tensor | None = None
    dt_weight: Tensor | None = None
    dt_bias: Tensor | None = None


SSM_PARTS = ("B", "decay", "importance", "delta")
"""What a mixer can record: B of both directions; the per-token Δ statistics (``decay``: mean
Δ and Δ·mean(A), from the scan kernel); the output ``importance``; the inputs of the
per-channel Δ (``delta``)."""


class Mamba(nn.Module):
    """Bidirectional Mamba mixer (bimamba v2), parameters named as in hustvl/Vim's mamba_simple."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        if_divide_out: bool = True,
        scan_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.if_divide_out = if_divide_out
        self.scan_backend = scan_backend
        self.record: tuple[str, ...] | None = None  # parts of SSM_PARTS to keep; None: off
        self.last_ssm: SSMStats | None = None  # what the last forward recorded
        di, r, n = self.d_inner, self.dt_rank, d_state

        self.in_proj = nn.Linear(d_model, di * 2, bias=False)
        for suffix in ("", "_b"):
            setattr(self, "conv1d" + suffix,
                    nn.Conv1d(di, di, kernel_size=d_conv, groups=di, padding=d_conv - 1, bias=True))
            setattr(self, "x_proj" + suffix, nn.Linear(di, r + 2 * n, bias=False))
            dt_proj = nn.Linear(r, di, bias=True)
            std = r**-0.5
            nn.init.uniform_(dt_proj.weight, -std, std)
            log_dt = torch.rand(di) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
            dt = torch.exp(log_dt)
            dt = dt.clamp(min=dt_init_floor)
            with torch.no_grad():
                dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            dt_proj.bias._no_reinit = True  # type: ignore[attr-defined]
            setattr(self, "dt_proj" + suffix, dt_proj)
        a_log = torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(di, 1)
        self.A_log = nn.Parameter(a_log.clone())
        self.D = nn.Parameter(torch.ones(di))
        self.A_b_log = nn.Parameter(a_log.clone())
        self.D_b = nn.Parameter(torch.ones(di))
        for p in (self.A_log, self.D, self.A_b_log, self.D_b):
            p._no_weight_decay = True  # type: ignore[attr-defined]
        self.out_proj = nn.Linear(di, d_model, bias=False)

    def mixer_params(self) -> MixerParams:
        """Both directions' parameters, as :func:`vimstm.ops.mixer.bimamba` takes them."""
        return MixerParams(
            conv_w=(self.conv1d.weight, self.conv1d_b.weight),
            conv_b=(self.conv1d.bias, self.conv1d_b.bias),
            x_proj_w=(self.x_proj.weight, self.x_proj_b.weight),
            dt_proj_w=(self.dt_proj.weight, self.dt_proj_b.weight),
            dt_proj_b=(self.dt_proj.bias, self.dt_proj_b.bias),
            A_log=(self.A_log, self.A_b_log),
            D=(self.D, self.D_b),
        )

    def forward(self, hidden_states: Tensor) -> Tensor:
        xz = self.in_proj(hidden_states)  # (b, l, 2 * d_inner)
        want_stats = self.record is not None and "decay" in self.record
        scale = 0.5 if self.if_divide_out else 1.0
        y, x_dbl, stats = bimamba(xz, self.mixer_params(), scale, self.scan_backend,
                                  stats=want_stats)
        if self.record is not None:
            self.last_ssm = self._stats(x_dbl, stats, y, scale)
        return self.out_proj(y)

    @torch.no_grad()
    def _stats(self, x_dbl: Tensor, stats: Tensor | None, y: Tensor, scale: float) -> SSMStats:
        """What merging reads, from the op's by-products: x_dbl (2, b, l, R + 2n) laid out as
        ``[zeros | dt (r) | B | C]`` (:mod:`vimstm.ops.mixer`), Δ stats."""
        parts = self.record or ()
        r, n = self.dt_rank, self.d_state
        rk = padded_rank(r)
        B_fwd = B_bwd = ts = imp = None
        dt = {}
        if "B" in parts:
            B_fwd, B_bwd = x_dbl[0, ..., rk:rk + n].float(), x_dbl[1, ..., rk:rk + n].float()
        if stats is not None:  # (b, 2, 2, l) -> (b, 4, l): delta_fwd, delta_bwd,
            ts = stats.flatten(1, 2)  # log_decay_fwd, log_decay_bwd
        if "delta" in parts:  # per-channel Δ is formed where it is used (merge_ref)
            dt = {"dt_low": x_dbl[..., rk - r:rk],
                  "dt_weight": torch.stack((self.dt_proj.weight, self.dt_proj_b.weight)),
                  "dt_bias": torch.stack((self.dt_proj.bias, self.dt_proj_b.bias))}
        if "importance" in parts:  # mean_d relu(y_fwd + y_bwd)
            imp = torch.mean(y.clamp_min(0), -1, dtype=torch.float32) / scale
        if ts is None:
            return SSMStats(B_fwd, B_bwd, None, None, None, None, imp, **dt)
        return SSMStats(B_fwd, B_bwd, ts[:, 2], ts[:, 3], ts[:, 0], ts[:, 1], imp, ts, **dt)


class Block(nn.Module):
    """Add -> RMSNorm -> Mixer, returning (mixer output, fp32 residual), as the official Block."""

    def __init__(self, dim: int, mixer: Mamba, drop_path: float = 0.0, eps: float = 1e-5) -> None:
        super().__init__()
        self.mixer = mixer
        self.norm = RMSNorm(dim, eps=eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()

    def forward(self, hidden_states: Tensor, residual: Tensor | None) -> tuple[Tensor, Tensor]:
        if residual is not None:
            hidden_states = self.drop_path(hidden_states)
        hidden, residual = self.norm(hidden_states, residual, self.mixer.scan_backend)
        return self.mixer(hidden), residual


@dataclass
class TokenState:
    """Bookkeeping that travels with the token sequence between blocks (used by merging)."""

    cls_index: int
    size: Tensor | None = None  # (batch, tokens) fp32: how many original tokens each one holds
    source: Tensor | None = None  # (batch, tokens, original tokens) 0/1, only when traced


class VisionMamba(nn.Module):
    """Vision Mamba with a middle class token; same state-dict keys as hustvl/Vim."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        stride: int = 16,
        depth: int = 24,
        embed_dim: int = 192,
        d_state: int = 16,
        in_chans: int = 3,
        num_classes: int = 1000,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        norm_epsilon: float = 1e-5,
        if_divide_out: bool = True,
        scan_backend: str = "auto",
        d_conv: int = 4,
        expand: int = 2,
        dynamic_img_size: bool = False,
    ) -> None:
        super().__init__()
        if depth < 1 or embed_dim < 1 or d_state < 1:
            raise ConfigError("depth, embed_dim and d_state must be positive")
        self.num_classes = num_classes
        self.embed_dim = self.num_features = self.d_model = embed_dim
        self.depth = depth
        self.patch_embed = PatchEmbed(img_size, patch_size, stride, in_chans, embed_dim,
                                      dynamic=dynamic_img_size)
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim))
        self.pos_drop = nn.Dropout(p=drop_rate)
        self.head = nn.Linear(embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        dpr = [0.0, *torch.linspace(0, drop_path_rate, depth).tolist()]
        self.layers = nn.ModuleList(
            Block(
                embed_dim,
                Mamba(embed_dim, d_state=d_state, d_conv=d_conv, expand=expand,
                      if_divide_out=if_divide_out, scan_backend=scan_backend),
                drop_path=dpr[i],
                eps=norm_epsilon,
            )
            for i in range(depth)
        )
        self.drop_path = DropPath(drop_path_rate) if drop_path_rate > 0 else nn.Identity()
        self.norm_f = RMSNorm(embed_dim, eps=norm_epsilon)
        self.merger: Any = None  # set by vimstm.merge.patch
        self.merge_info: dict[str, Any] = {}
        self._init_weights(depth)

    # -- init, as the official code -------------------------------------------------------
    def _init_weights(self, depth: int) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight  # lecun normal
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        nn.init.trunc_normal_(w, std=math.sqrt(1.0 / fan_in) / 0.87962566103423978)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for m in self.modules():
            is_linear = isinstance(m, nn.Linear) and m.bias is not None and m is not self.head
            if is_linear and not getattr(m.bias, "_no_reinit", False):
                nn.init.zeros_(m.bias)
            if isinstance(m, Mamba):
                nn.init.kaiming_uniform_(m.out_proj.weight, a=math.sqrt(5))
                with torch.no_grad():
                    m.out_proj.weight /= math.sqrt(depth)

    @torch.jit.ignore
    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token"}

    @property
    def scan_backend(self) -> str:
        return self.layers[0].mixer.scan_backend

    def set_scan_backend(self, backend: str) -> None:
        """Switch every mixer to another selective-scan implementation."""
        from vimstm.ops import BACKENDS

        if backend not in BACKENDS:
            raise ConfigError(f"unknown scan_backend {backend!r}; choose one of {BACKENDS}")
        for layer in self.layers:
            layer.mixer.scan_backend = backend

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()

    # -- forward ------------------------------------------------------------------------
    def embed(self, x: Tensor) -> tuple[Tensor, int]:
        """Patch tokens with the class token inserted at M//2 and position embedding added."""
        hw = (x.shape[-2], x.shape[-1])
        x = self.patch_embed(x)
        b, m, _ = x.shape
        pos = m // 2
        x = torch.cat((x[:, :pos], self.cls_token.expand(b, -1, -1), x[:, pos:]), dim=1)
        pos_embed = self.pos_embed
        if m != self.patch_embed.num_patches:  # dynamic_img_size: another grid
            pe = self.patch_embed
            new_grid = patch_grid(hw, pe.patch_size, pe.stride)
            pos_embed = resample_pos_embed(pos_embed, pe.grid_size, new_grid,
                                           antialias=m < pe.num_patches)
        x = self.pos_drop(x + pos_embed)
        return x, pos

    def forward_features(self, x: Tensor) -> Tensor:
        hidden, cls_index = self.embed(x)
        residual: Tensor | None = None
        merger = self.merger
        state = TokenState(cls_index=cls_index)
        if merger is not None:
            state = merger.begin(self, hidden, state)
        for i, layer in enumerate(self.layers):
            if merger is not None and (residual is not None or merger.pre):
                hidden, residual, state = merger.step(self, i, hidden, residual, state)
            hidden, residual = layer(hidden, residual)
        if merger is not None:
            merger.end(self, hidden, state)
        hidden, _ = self.norm_f(self.drop_path(hidden), residual, self.scan_backend)
        return hidden[:, state.cls_index, :]

    def forward_head(self, feats: Tensor) -> Tensor:
        return self.head(feats)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor:
        feats = self.forward_features(x)
        return feats if return_features else self.head(feats)
