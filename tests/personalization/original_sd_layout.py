"""Write a diffusers Stable Diffusion folder as one checkpoint in the original (CompVis / LDM) layout,
the kind of ``.safetensors`` / ``.ckpt`` file model sites distribute, so the tests can load it back
with ``from_single_file`` and compare it with the folder.

diffusers ships only the other direction in the library (``from_single_file``); its repository holds
the direction needed here as a script (``scripts/convert_diffusers_to_original_stable_diffusion.py``),
written for SD's fixed layout (4 blocks, 2 resnets each). This one follows the same naming rules but
reads the block and layer counts from the models' configs, so it also writes the tiny pipeline. The
text encoder is written in SD 1.x's layout (transformers' CLIP names under
``cond_stage_model.transformer.``), which ``from_single_file`` reads for any width.
"""
import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."

# diffusers resnet names -> LDM ResBlock names
RESNET_NAMES = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
UNET_TOP_LEVEL = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
VAE_ATTENTION_NAMES = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_resnet(rest):
    layer, _, param = rest.rpartition(".")
    return f"{RESNET_NAMES[layer]}.{param}"


def unet_key(key, config):
    """The LDM name of one diffusers UNet parameter (SD's UNetModel numbering of input/output blocks)."""
    per_down = config["layers_per_block"] + 1  # the resnets (+ attentions), then the downsampler's slot
    per_up = config["layers_per_block"] + 1  # one more resnet, the upsampler in the last one
    up_types = config["up_block_types"]
    for name, ldm in UNET_TOP_LEVEL.items():
        if key.startswith(name + "."):
            return ldm + key[len(name):]
    m = re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + i * per_down + j
        return f"input_blocks.{index}.0.{_rename_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    m = re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per_down}.0.op.{m[2]}"
    m = re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key)
    if m:
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = i * per_up + j
        return f"output_blocks.{index}.0.{_rename_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    m = re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key)
    if m:
        i = int(m[1])
        slot = 2 if "CrossAttn" in up_types[i] else 1
        return f"output_blocks.{i * per_up + per_up - 1}.{slot}.{m[2]}"
    m = re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_rename_resnet(m[2])}"
    if key.startswith("mid_block.attentions.0."):
        return "middle_block.1." + key[len("mid_block.attentions.0."):]
    raise KeyError(f"no LDM name for UNet parameter {key}")


def vae_key(key, config):
    """The LDM name of one diffusers VAE parameter (and whether it is an attention projection, which
    LDM stores as a 1x1 convolution)."""
    n = len(config["block_out_channels"])
    m = re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", key)
    if m:
        layer = VAE_ATTENTION_NAMES[m[2]]
        return f"{m[1]}.mid.attn_1.{layer}.{m[3]}", m[2] != "group_norm"
    m = re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.{m[2]}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}", False
    m = re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", key)
    if m:
        return f"decoder.up.{n - 1 - int(m[1])}.upsample.{m[2]}", False
    return key.replace("conv_norm_out", "norm_out"), False


def original_layout_state_dict(pipe):
    """One state dict of ``pipe``'s UNet, VAE and text encoder in the original SD layout."""
    out = {}
    unet_config = dict(pipe.unet.config)
    for key, value in pipe.unet.state_dict().items():
        out[UNET_PREFIX + unet_key(key, unet_config)] = value.detach().clone()
    vae_config = dict(pipe.vae.config)
    for key, value in pipe.vae.state_dict().items():
        name, is_projection = vae_key(key, vae_config)
        value = value.detach().clone()
        if is_projection and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + name] = value
    for key, value in pipe.text_encoder.state_dict().items():
        if not key.startswith("text_model."):  # transformers >= 5.6 drops the wrapper from the names
            key = "text_model." + key
        out[TEXT_ENCODER_PREFIX + key] = value.detach().clone()
    return out


def save_single_file(pipe, path):
    """Write ``pipe`` as one original-layout checkpoint: ``.safetensors`` (safetensors) or ``.ckpt``
    (``torch.save({"state_dict": ...})``, as CompVis' training wrote it). Returns ``path``."""
    state_dict = original_layout_state_dict(pipe)
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state_dict.items()}, path)
    else:
        torch.save({"state_dict": state_dict}, path)
    return path
