"""Gradient-family methods against closed-form answers."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import salience
from conftest import Quadratic, SoftplusNet
from salience.targets import Custom, TargetError


def linear_model(features: int = 5, classes: int = 4) -> nn.Linear:
    model = nn.Linear(features, classes).double()
    with torch.no_grad():
        model.weight.copy_(
            torch.arange(features * classes, dtype=torch.float64).reshape(classes, -1)
        )
        model.weight.sub_(7.0)
    return model


def test_gradient_of_quadratic_is_analytic() -> None:
    model = Quadratic()
    x = torch.randn(3, 6, dtype=torch.float64)
    explanation = salience.explain(model, x, method="gradient")
    expected = 2 * model.w.detach() * x
    assert explanation.attributions.shape == (3, 1, 6)
    torch.testing.assert_close(explanation.attributions[:, 0].double(), expected, atol=1e-6, rtol=0)
    assert explanation.targets.tolist() == [[0], [0], [0]]  # single output: explained as is
    absolute = salience.explain(model, x, method="gradient", absolute=True)
    torch.testing.assert_close(
        absolute.attributions[:, 0].double(), expected.abs(), atol=1e-6, rtol=0
    )


def test_gradient_of_linear_model_is_weight_row_of_predicted_class() -> None:
    model = linear_model()
    x = torch.randn(4, 5, dtype=torch.float64)
    explanation = salience.explain(model, x)
    predicted = model(x).argmax(dim=1)
    assert explanation.targets[:, 0].tolist() == predicted.tolist()
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), model.weight.detach()[predicted], atol=1e-6, rtol=0
    )
    torch.testing.assert_close(
        explanation.scores[:, 0].double(),
        model(x).gather(1, predicted[:, None])[:, 0].detach(),
        atol=1e-5,
        rtol=0,
    )


def test_gradient_x_input() -> None:
    model = Quadratic()
    x = torch.randn(2, 6, dtype=torch.float64)
    explanation = salience.explain(model, x, method="gradient_x_input")
    expected = 2 * model.w.detach() * x * x
    torch.testing.assert_close(explanation.attributions[:, 0].double(), expected, atol=1e-6, rtol=0)


class CountingLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = linear_model()
        self.calls = 0

    def forward(self, x: Tensor) -> Tensor:
        self.calls += 1
        return self.inner(x)


def test_top_k_gives_k_maps_from_one_forward_pass() -> None:
    model = CountingLinear()
    x = torch.randn(3, 5, dtype=torch.float64)
    adapter = salience.TorchAdapter(model, inference_copy=False)
    explanation = salience.Gradient(adapter)(x, "top-3")
    assert model.calls == 1
    top = model.inner(x).topk(3, dim=1).indices
    assert explanation.targets.tolist() == top.tolist()
    assert explanation.attributions.shape == (3, 3, 5)
    torch.testing.assert_close(
        explanation.attributions.double(), model.inner.weight.detach()[top], atol=1e-6, rtol=0
    )


def test_class_index_per_sample_and_for_all() -> None:
    model = linear_model()
    x = torch.randn(2, 5, dtype=torch.float64)
    weight = model.weight.detach()
    one = salience.explain(model, x, target=2)
    torch.testing.assert_close(one.attributions[:, 0].double(), weight[[2, 2]], atol=1e-6, rtol=0)
    each = salience.explain(model, x, target=[1, 3])
    torch.testing.assert_close(each.attributions[:, 0].double(), weight[[1, 3]], atol=1e-6, rtol=0)


def test_softmax_model_is_explained_on_its_logits() -> None:
    base = linear_model()
    model = nn.Sequential(base, nn.Softmax(dim=1))
    x = torch.randn(2, 5, dtype=torch.float64)
    explanation = salience.explain(model, x, target=1)
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), base.weight.detach()[[1, 1]], atol=1e-6, rtol=0
    )
    assert isinstance(model[1], nn.Softmax)  # the model is not modified


def test_probability_score_is_the_softmax_gradient() -> None:
    base = linear_model()
    x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
    (expected,) = torch.autograd.grad(torch.softmax(base(x), dim=1)[:, 2].sum(), x)
    for model in (
        base,
        nn.Sequential(base, nn.Softmax(dim=1)),
        nn.Sequential(base, nn.LogSoftmax(1)),
    ):
        explanation = salience.explain(model, x.detach(), target=2, score="probability")
        torch.testing.assert_close(
            explanation.attributions[:, 0].double(), expected, atol=1e-6, rtol=0
        )
        probabilities = torch.softmax(base(x), dim=1)[:, 2].detach()
        torch.testing.assert_close(
            explanation.scores[:, 0].double(), probabilities, atol=1e-6, rtol=0
        )


def test_callable_target() -> None:
    model = linear_model()
    x = torch.randn(2, 5, dtype=torch.float64)
    explanation = salience.explain(model, x, target=lambda out: out[:, 0] - out[:, 1])
    expected = model.weight.detach()[0] - model.weight.detach()[1]
    torch.testing.assert_close(
        explanation.attributions[:, 0].double(), expected.expand(2, -1), atol=1e-6, rtol=0
    )
    assert explanation.targets.tolist() == [[-1], [-1]]
    with pytest.raises(TargetError, match="one score per row of outputs"):
        salience.explain(model, x, target=Custom(lambda out: out))


class FunctionalReLUNet(nn.Module):
    """h = act(W1 x + b1), y = W2 h with a functional or module activation."""

    def __init__(self, activation: object) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(5)
        self.first = nn.Linear(6, 12).double()
        self.second = nn.Linear(12, 3).double()
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator, dtype=torch.float64) * 2)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        return self.second(self.activation(self.first(x)))


@pytest.mark.parametrize(
    ("activation", "upper"),
    [
        (F.relu, None),
        (F.relu6, 6.0),
        (nn.ReLU(), None),
        (nn.ReLU6(), 6.0),
        (torch.relu, None),
        (Tensor.relu, None),
    ],
)
def test_guided_backprop_applies_rule_to_functional_and_module_relus(
    activation: object, upper: float | None
) -> None:
    model = FunctionalReLUNet(activation)
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    pre = model.first(x).detach()
    inside = (pre > 0) if upper is None else (pre > 0) & (pre < upper)
    w1, w2 = model.first.weight.detach(), model.second.weight.detach()
    target = 1
    plain_expected = (w2[target] * inside) @ w1
    guided_expected = (w2[target].clamp(min=0) * inside) @ w1
    guided = salience.explain(model, x, method="guided_backprop", target=target).attributions[:, 0]
    plain = salience.explain(model, x, method="gradient", target=target).attributions[:, 0]
    torch.testing.assert_close(guided.double(), guided_expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(plain.double(), plain_expected, atol=1e-6, rtol=0)
    # they differ exactly where a negative upstream gradient meets an active unit
    assert not torch.allclose(guided.double(), plain.double())
    assert bool(((w2[target] < 0) & inside.any(0)).any())


def test_guided_backprop_rule_does_not_leak_out_of_the_call() -> None:
    model = FunctionalReLUNet(F.relu)
    x = torch.randn(2, 6, dtype=torch.float64, requires_grad=True)
    salience.explain(model, x.detach(), method="guided_backprop")
    y = F.relu(x * -1.0 + 0.5).sum()
    (grad,) = torch.autograd.grad(y, x)
    assert bool((grad <= 0).all()) and bool((grad < 0).any())  # the plain ReLU gradient


def test_smoothgrad_with_zero_noise_equals_gradient() -> None:
    model = SoftplusNet()
    x = torch.randn(3, 10)
    plain = salience.explain(model, x, method="gradient").attributions
    smooth = salience.explain(model, x, method="smoothgrad", noise=0.0, n_samples=5).attributions
    torch.testing.assert_close(smooth, plain, atol=1e-6, rtol=1e-6)


def test_smoothgrad_same_for_any_chunk_size_and_same_seed() -> None:
    model = SoftplusNet()
    x = torch.randn(2, 10)
    maps = [
        salience.explain(
            model, x, method="smoothgrad", n_samples=7, chunk_size=c, seed=4
        ).attributions
        for c in (1, 3, 7, 50)
    ]
    for other in maps[1:]:
        torch.testing.assert_close(other, maps[0], atol=1e-6, rtol=1e-5)
    again = salience.explain(
        model, x, method="smoothgrad", n_samples=7, chunk_size=1, seed=4
    ).attributions
    assert torch.equal(again, maps[0])
    different = salience.explain(model, x, method="smoothgrad", n_samples=7, seed=5).attributions
    assert not torch.allclose(different, maps[0])


def test_smoothgrad_matches_its_definition() -> None:
    model = SoftplusNet()
    x = torch.randn(2, 10)
    explainer = salience.SmoothGrad(model, n_samples=6, noise=0.2, seed=1, squared=True)
    noisy = explainer.noisy_inputs(x).requires_grad_(True)
    target = model(x).argmax(dim=1).repeat_interleave(6)
    (grads,) = torch.autograd.grad(model(noisy).gather(1, target[:, None]).sum(), noisy)
    expected = grads.square().reshape(2, 6, 10).mean(dim=1)
    torch.testing.assert_close(explainer(x).attributions[:, 0], expected, atol=1e-6, rtol=1e-5)
    sigma = 0.2 * (x.amax(dim=1) - x.amin(dim=1))
    spread = (noisy.detach().reshape(2, 6, 10) - x[:, None]).std(dim=(1, 2))
    assert torch.all((spread / sigma - 1).abs() < 0.4)


def test_vargrad_is_zero_for_linear_and_analytic_for_quadratic() -> None:
    x = torch.randn(1, 6, dtype=torch.float64)
    linear = salience.explain(linear_model(6, 3), x, method="vargrad", n_samples=20).attributions
    assert float(linear.abs().max()) < 1e-9
    model = Quadratic()
    n = 4000
    result = salience.explain(model, x, method="vargrad", n_samples=n, noise=0.1, chunk_size=1000)
    sigma = 0.1 * float(x.max() - x.min())
    expected = 4 * model.w.detach().square() * sigma**2  # Var(2 w (x + ε)) = 4 w² σ²
    torch.testing.assert_close(result.attributions[0, 0].double(), expected, rtol=0.1, atol=1e-9)


def test_smoothgrad_rejects_a_multi_pass_base() -> None:
    with pytest.raises(ValueError, match="single-pass"):
        salience.SmoothGrad(SoftplusNet(), base="integrated_gradients")
