"""Files the personalisation tests load, each written the way its format's own tools write it:
peft adapters on the tiny models supply the LoRA weights (and are the reference the loaded model must
reproduce), diffusers' ``save_lora_weights`` writes the diffusers format, safetensors / ``torch.save``
write the token files; kohya's and lora_diffusion's layouts are written by hand from the same weights
(neither library is installable here: kohya's sd-scripts is not a package, lora_diffusion pins
diffusers 0.x), following their savers' key names, metadata and layer order."""
import json

import torch
from safetensors.torch import save_file

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj", "conv1"]  # attention, GEGLU and a resnet conv
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def load_models(model_path):
    """Fresh UNet and text encoder of a diffusers folder (fp32, eval)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(model_path, subfolder="unet").eval()
    text_encoder = CLIPTextModel.from_pretrained(model_path, subfolder="text_encoder").eval()
    return unet, text_encoder


def add_random_lora(model, target_modules, rank=2, alpha=None, seed=0, adapter="writer"):
    """A peft LoRA adapter on ``model`` (``target_modules``: peft's names or suffixes), both matrices
    random (B too, so the adapter changes the output); returns ``model``, now computing W x + (alpha/r) B A x."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=rank, lora_alpha=rank if alpha is None else alpha, target_modules=list(target_modules),
                        lora_dropout=0.0)
    inject_adapter_in_model(config, model, adapter_name=adapter)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def peft_pairs(model, adapter="writer"):
    """``{module path: (down = lora_A weight, up = lora_B weight)}`` of the adapter, in module order."""
    from peft.tuners.lora import LoraLayer

    return {name: (m.lora_A[adapter].weight.detach().clone(), m.lora_B[adapter].weight.detach().clone())
            for name, m in model.named_modules() if isinstance(m, LoraLayer) and adapter in m.lora_A}


def peft_state_dict(model, adapter="writer"):
    """peft's own serialisation of the adapter (``<module>.lora_A.weight`` ...)."""
    from peft import get_peft_model_state_dict

    return get_peft_model_state_dict(model, adapter_name=adapter)


def write_diffusers_lora(folder, unet=None, text_encoder=None, unet_alpha=None, rank=2):
    """diffusers' ``save_lora_weights`` of the adapters (``unet_alpha``: written as the adapter metadata
    diffusers reads back, as its training scripts do). Returns the folder."""
    from diffusers import StableDiffusionPipeline

    metadata = {"r": rank, "lora_alpha": unet_alpha} if unet_alpha is not None else None
    StableDiffusionPipeline.save_lora_weights(
        str(folder),
        unet_lora_layers=peft_state_dict(unet) if unet is not None else None,
        text_encoder_lora_layers=peft_state_dict(text_encoder) if text_encoder is not None else None,
        unet_lora_adapter_metadata=metadata,
    )
    return str(folder)


def write_kohya_lora(path, unet=None, text_encoder=None, alpha=None):
    """kohya sd-scripts' LoRA layout: ``lora_unet_<module path with _ for .>.lora_down.weight`` /
    ``.lora_up.weight`` / ``.alpha`` (``lora_te_`` and transformers' ``text_model.`` paths for the text
    encoder)."""
    tensors = {}
    for prefix, model, extra in (("lora_unet_", unet, ""), ("lora_te_", text_encoder, "text_model.")):
        if model is None:
            continue
        for name, (down, up) in peft_pairs(model).items():
            if extra and not name.startswith(extra):
                name = extra + name
            flat = prefix + name.replace(".", "_")
            tensors[flat + ".lora_down.weight"] = down.contiguous()
            tensors[flat + ".lora_up.weight"] = up.contiguous()
            tensors[flat + ".alpha"] = torch.tensor(float(down.shape[0] if alpha is None else alpha))
    save_file(tensors, str(path))
    return str(path)


def lora_diffusion_order(model, target_classes, legacy=False):
    """The Linear layers lora_diffusion patches, in its order (``_find_modules``: each module of a target
    class in module order, then its Linear descendants). ``legacy``: diffusers <= 0.12's transformer
    blocks, which registered ``ff`` before ``attn2``."""
    ancestors = [(n, m) for n, m in model.named_modules() if type(m).__name__ in target_classes]
    if legacy:
        def key(item):
            index, (name, _) = item
            for tail, rank in ((".attn1", 0), (".ff.net.0", 1), (".attn2", 2)):
                if name.endswith(tail):
                    block = name[: -len(tail)]
                    return [i for i, (n, _) in enumerate(ancestors) if n.startswith(block + ".")][0], rank
            return index, 0
        ancestors = [a for _, a in sorted(enumerate(ancestors), key=key)]
    from peft.tuners.lora import LoraLayer

    out = []
    for name, ancestor in ancestors:
        wrapped = []  # a peft-wrapped layer counts as the Linear it wraps (its own children do not)
        for child, module in ancestor.named_modules():
            if any(child.startswith(w + ".") for w in wrapped):
                continue
            if isinstance(module, LoraLayer):
                wrapped.append(child)
                out.append(f"{name}.{child}")
            elif isinstance(module, torch.nn.Linear):
                out.append(f"{name}.{child}")
    return out


LORA_DIFFUSION_UNET_TARGETS = ["CrossAttention", "Attention", "GEGLU"]
LORA_DIFFUSION_TEXT_TARGETS = ["CLIPAttention"]


def write_lora_diffusion(path, unet=None, text_encoder=None, embeds=None, legacy=False):
    """lora_diffusion's ``save_safeloras_with_embeds``: ``unet:<i>:up`` / ``:down`` tensors in its layer
    order, metadata ``unet`` = the target classes (JSON) and ``unet:<i>:rank``; each token a tensor with
    metadata ``<embed>``. The adapters should sit on exactly the layers lora_diffusion patches (layers
    without one are left out, which makes a file that no longer fits the model)."""
    tensors, metadata = {}, {}
    for name, model, targets in (("unet", unet, LORA_DIFFUSION_UNET_TARGETS), ("text_encoder", text_encoder, LORA_DIFFUSION_TEXT_TARGETS)):
        if model is None:
            continue
        pairs = peft_pairs(model)
        metadata[name] = json.dumps(targets)
        written = [m for m in lora_diffusion_order(model, targets, legacy and name == "unet") if m in pairs]
        for i, module in enumerate(written):
            down, up = pairs[module]
            tensors[f"{name}:{i}:up"], tensors[f"{name}:{i}:down"] = up.contiguous(), down.contiguous()
            metadata[f"{name}:{i}:rank"] = str(down.shape[0])
    for token, tensor in (embeds or {}).items():
        tensors[token] = tensor.contiguous()
        metadata[token] = "<embed>"
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def write_lora_diffusion_pt(path, unet, text_encoder, embeds):
    """lora_diffusion's torch format (``save_lora_weight`` + ``save_all``): ``X.pt`` the UNet's
    [up, down, up, down, ...], ``X.text_encoder.pt`` the text encoder's, ``X.ti.pt`` {token: tensor}."""
    stem = str(path)[: -len(".pt")]
    for file, model, targets in ((stem + ".pt", unet, LORA_DIFFUSION_UNET_TARGETS),
                                 (stem + ".text_encoder.pt", text_encoder, LORA_DIFFUSION_TEXT_TARGETS)):
        pairs = peft_pairs(model)
        weights = []
        for module in lora_diffusion_order(model, targets):
            down, up = pairs[module]
            weights += [up, down]
        torch.save(weights, file)
    torch.save(dict(embeds), stem + ".ti.pt")
    return str(path)


def lora_diffusion_module_names(model, kind):
    """peft ``target_modules`` (full paths) that put an adapter exactly where lora_diffusion patches."""
    targets = LORA_DIFFUSION_UNET_TARGETS if kind == "unet" else LORA_DIFFUSION_TEXT_TARGETS
    return lora_diffusion_order(model, targets)


def write_a1111_pt(path, name, rows):
    """An A1111 embedding (``torch.save`` of its dict: ``string_to_param["*"]`` rows, the token's ``name``)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": rows.clone()}, "name": name,
                "step": 1000, "sd_checkpoint": "0123abcd", "sd_checkpoint_name": "model"}, str(path))
    return str(path)


def write_lucid_dreamer_token(path, token, width, seed=0):
    """A token file as LucidDreamer ships one (``step_inv_1000.safetensors``): one float32 [width] tensor
    named by the token, metadata ``{token: "<embed>"}``. Returns ``(path, tensor)``."""
    tensor = torch.randn(width, generator=torch.Generator().manual_seed(seed))
    save_file({token: tensor}, str(path), metadata={token: "<embed>"})
    return str(path), tensor
