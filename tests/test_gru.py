"""sedlib.models.gru: the hand-written backward through time equals autograd through nn.GRU."""

import pytest
import torch
from torch import nn

from sedlib.models.gru import bidirectional_gru, uses_manual_backward


def _grads(out, inputs, grad_out):
    return torch.autograd.grad(out, inputs, grad_out)


@pytest.mark.parametrize("layers, batch, steps", [(1, 3, 7), (2, 2, 5), (1, 4, 1), (3, 1, 9)])
def test_outputs_and_gradients_equal_autograd_through_nn_gru(layers, batch, steps):
    torch.manual_seed(layers * 100 + steps)
    gru = nn.GRU(5, 4, num_layers=layers, bidirectional=True, batch_first=True).double()
    x = torch.randn(batch, steps, 5, dtype=torch.float64, requires_grad=True)
    assert uses_manual_backward(x, gru)
    reference, manual = gru(x)[0], bidirectional_gru(x, gru)
    assert torch.equal(reference, manual)  # the forward pass is nn.GRU's own kernel, layer by layer
    assert manual.grad_fn is not None and "BiGRU" in type(manual.grad_fn).__name__
    # a loss that weighs every frame and both directions differently, so that a swapped direction or frame shows
    grad_out = torch.randn_like(reference)
    inputs = [x, *gru.parameters()]
    for expected, got, name in zip(_grads(reference, inputs, grad_out), _grads(manual, inputs, grad_out),
                                   ["x"] + [n for n, _ in gru.named_parameters()]):
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12, msg=name)


def test_float32_gradients_of_the_embedded_size_and_training_of_a_crnn():
    torch.manual_seed(0)
    gru = nn.GRU(32, 64, bidirectional=True, batch_first=True)
    x = torch.randn(4, 156, 32, requires_grad=True)
    grad_out = torch.randn(4, 156, 128)
    inputs = [x, *gru.parameters()]
    for expected, got in zip(_grads(gru(x)[0], inputs, grad_out), _grads(bidirectional_gru(x, gru), inputs, grad_out)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_gradcheck_in_float64():
    torch.manual_seed(1)
    gru = nn.GRU(3, 2, bidirectional=True, batch_first=True).double()
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda inp, *params: bidirectional_gru(inp, gru), (x, *gru.parameters()))


def test_inference_and_unsupported_settings_use_nn_gru():
    gru = nn.GRU(3, 2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 4, 3)
    with torch.no_grad():
        assert not uses_manual_backward(x, gru)
        assert torch.equal(bidirectional_gru(x, gru), gru(x)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_manual_backward(x, gru)
    assert not uses_manual_backward(x.half(), gru)
    assert not uses_manual_backward(x, nn.GRU(3, 2, num_layers=2, dropout=0.5, bidirectional=True, batch_first=True))
    assert not uses_manual_backward(x, nn.GRU(3, 2, batch_first=True))  # one direction
    assert not uses_manual_backward(x.transpose(0, 1), nn.GRU(3, 2, bidirectional=True))  # time-first
