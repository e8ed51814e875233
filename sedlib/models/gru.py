"""Bidirectional GRU whose backward pass through time is written by hand, for training on CPU.

``nn.GRU`` on CPU records a dozen small autograd nodes per time step and direction; the backward pass then
replays them one by one (the embedded CRNN, 16 clips x 156 frames, 64 units: about 80 ms of the GRU's
100 ms forward + backward on one thread, docs/training.md). Here the forward pass is ``nn.GRU``'s own kernel
(``torch.gru``, so outputs are bit-identical), and the backward pass recomputes the gates for every frame at
once from the saved outputs and runs the recursion with 3 operations per frame, both directions together.
Gradients equal autograd's up to float rounding (tests/test_gru.py checks float64 to 1e-12).

Used only where it pays: on CPU, float32 / float64, gradients enabled, no autocast. Everything else (inference,
the teacher's forward, GPUs with cuDNN) calls ``nn.GRU`` unchanged.

GRU of torch (gates r, z, n in this order in the weights, per direction):
    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr),  z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),  h' = (1 - z) * n + z * h
"""

from __future__ import annotations

import torch
from torch import nn

# parameter names of one layer, forward direction then reverse, in torch.gru's flat order
_PARAMS = ("weight_ih_l{}", "weight_hh_l{}", "bias_ih_l{}", "bias_hh_l{}")


def _layer_params(gru: nn.GRU, layer: int) -> list[torch.Tensor]:
    names = [p.format(layer) for p in _PARAMS] + [p.format(layer) + "_reverse" for p in _PARAMS]
    return [getattr(gru, name) for name in names]


def _processing_order(seq: torch.Tensor, hidden: int | None = None) -> torch.Tensor:
    """(B, T, F), or both halves of (B, T, 2H) -> (2, T, B, .): direction 0 in time order, direction 1 reversed."""
    forward, backward = (seq, seq) if hidden is None else (seq[..., :hidden], seq[..., hidden:])
    return torch.stack([forward.transpose(0, 1), backward.transpose(0, 1).flip(0)])


class _BiGRULayer(torch.autograd.Function):
    """One bidirectional layer: x (B, T, I) -> (B, T, 2H), forward direction's features first."""

    @staticmethod
    def forward(ctx, x, *params):
        hidden = params[1].shape[1]
        h0 = x.new_zeros(2, x.shape[0], hidden)
        out = torch.gru(x, h0, list(params), True, 1, 0.0, False, True, True)[0]
        ctx.save_for_backward(x, out, *params)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, out, *p = ctx.saved_tensors
        w_ih, w_hh = torch.stack([p[0], p[4]]), torch.stack([p[1], p[5]])  # (2, 3H, I), (2, 3H, H)
        b_ih, b_hh = torch.stack([p[2], p[6]]), torch.stack([p[3], p[7]])  # (2, 3H)
        batch, steps, hidden = x.shape[0], x.shape[1], w_hh.shape[2]
        # every frame's input, previous state and gates, in processing order, as (2, T * B, .)
        xs = _processing_order(x).reshape(2, steps * batch, -1)
        h_prev = torch.cat([out.new_zeros(2, 1, batch, hidden), _processing_order(out, hidden)[:, :-1]], dim=1)
        h_prev = h_prev.view(2, steps * batch, hidden)
        gi = torch.baddbmm(b_ih.unsqueeze(1), xs, w_ih.transpose(1, 2))
        gh = torch.baddbmm(b_hh.unsqueeze(1), h_prev, w_hh.transpose(1, 2))
        rz = torch.sigmoid(gi[..., : 2 * hidden] + gh[..., : 2 * hidden])
        r, z = rz[..., :hidden], rz[..., hidden:]
        hn = gh[..., 2 * hidden:]
        n = torch.tanh(gi[..., 2 * hidden:] + r * hn)
        # d(pre-activations of r, z and of W_hn h + b_hn) = dh * coef[:3]; dh_prev = dh * z + d(gh) @ W_hh
        dn_pre = (1 - z) * (1 - n * n)
        coef = torch.cat([dn_pre * hn * r * (1 - r), (h_prev - n) * z * (1 - z), dn_pre * r, z], dim=-1)
        coef = coef.view(2, steps, batch, 4, hidden).transpose(0, 1)
        # the recursion on frame-major buffers (T, 2, B, .): one contiguous (2, B, .) block per frame
        dh = _processing_order(grad_out, hidden).transpose(0, 1).contiguous()  # becomes dL/dh_t frame by frame
        d_gates = coef.new_empty(steps, 2, batch, 4, hidden)
        for t in range(steps - 1, -1, -1):
            d = torch.mul(coef[t], dh[t].unsqueeze(2), out=d_gates[t]).view(2, batch, 4 * hidden)
            if t:
                dh[t - 1].add_(d[..., 3 * hidden:]).baddbmm_(d[..., : 3 * hidden], w_hh)
        d_gh = d_gates[..., :3, :].transpose(0, 1).reshape(2, steps * batch, 3 * hidden)
        d_gi = d_gh.clone()
        d_gi[..., 2 * hidden:] = dh.transpose(0, 1).reshape(2, steps * batch, hidden) * dn_pre
        d_w_hh = torch.bmm(d_gh.transpose(1, 2), h_prev)
        d_w_ih = torch.bmm(d_gi.transpose(1, 2), xs)
        d_xs = torch.bmm(d_gi, w_ih).view(2, steps, batch, -1)
        dx = (d_xs[0] + d_xs[1].flip(0)).transpose(0, 1)
        d_b_ih, d_b_hh = d_gi.sum(1), d_gh.sum(1)
        return dx, d_w_ih[0], d_w_hh[0], d_b_ih[0], d_b_hh[0], d_w_ih[1], d_w_hh[1], d_b_ih[1], d_b_hh[1]


def uses_manual_backward(x: torch.Tensor, gru: nn.GRU) -> bool:
    """Whether ``bidirectional_gru`` takes the hand-written backward for this input (see the module docstring)."""
    return (torch.is_grad_enabled() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64)
            and not torch.is_autocast_enabled("cpu") and gru.bidirectional and gru.batch_first and gru.bias
            and (gru.dropout == 0.0 or gru.num_layers == 1))


def bidirectional_gru(x: torch.Tensor, gru: nn.GRU) -> torch.Tensor:
    """x (B, T, I) -> (B, T, 2H) of a batch-first bidirectional ``gru`` (its outputs, not the final states)."""
    if not uses_manual_backward(x, gru):
        return gru(x)[0]
    for layer in range(gru.num_layers):
        x = _BiGRULayer.apply(x, *_layer_params(gru, layer))
    return x
