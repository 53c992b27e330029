"""Learned tokens reach the text encoder that makes the embeddings: each format's rows land in the
embedding table exactly, a prompt naming the token is encoded differently from the same text without
it, and every bad file is one line naming the key."""
import pytest
import torch
from safetensors.torch import save_file

from personalization_files import write_a1111_pt, write_lucid_dreamer_token
from threestudio_lucid.errors import ConfigError
from threestudio_lucid.guidance.diffusion_base import load_stable_diffusion
from threestudio_lucid.personalization import encode_prompts, expand_multi_vector_tokens, load_text_encoder

PROMPT = "a portrait of <Taylor_Swift>, front view"


def row(pipe, token):
    return pipe.text_encoder.get_input_embeddings().weight[pipe.tokenizer.convert_tokens_to_ids(token)]


def encode(pipe, text):
    return encode_prompts(pipe.tokenizer, pipe.text_encoder, [text])


def test_lucid_dreamer_token_is_its_row_in_the_sd21_wide_encoder_of_both_components(sd21_width_path, personalization, tmp_path):
    """LucidDreamer's ``step_inv_1000.safetensors`` layout (one float32 [1024] tensor named by the token,
    metadata <embed>) on a 1024-wide encoder, through the prompt processor's and the guidance's loaders."""
    path, tensor = write_lucid_dreamer_token(tmp_path / "step_inv_1000.safetensors", "<Taylor_Swift>", 1024)
    text = load_text_encoder(personalization(sd21_width_path, textual_inversion_path=path))
    assert torch.equal(row(text, "<Taylor_Swift>"), tensor)
    token_id = text.tokenizer.convert_tokens_to_ids("<Taylor_Swift>")
    ids = text.tokenizer(PROMPT).input_ids
    assert ids.count(token_id) == 1  # one token, not its letters
    plain = load_text_encoder(personalization(sd21_width_path))
    with_token, without = encode(text, PROMPT), encode(plain, PROMPT)
    assert with_token.shape == (1, 77, 1024)
    assert (with_token - without).abs().max() > 1e-2
    # the guidance's loader puts the same row into its own text encoder and encodes the same way
    pipe = load_stable_diffusion(sd21_width_path, torch.float32,
                                 personalization=personalization(sd21_width_path, textual_inversion_path=path))
    assert torch.equal(row(pipe, "<Taylor_Swift>"), tensor)
    torch.testing.assert_close(encode(pipe, PROMPT), with_token, rtol=0, atol=0)
    # and the same file given as LucidDreamer's ts_lora gives it: as the LoRA path (tokens only)
    as_lora = load_text_encoder(personalization(sd21_width_path, lora_path=path))
    torch.testing.assert_close(encode(as_lora, PROMPT), with_token, rtol=0, atol=0)


def test_a1111_multi_vector_token_becomes_consecutive_rows(tiny_sd_path, personalization, tmp_path):
    rows = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    path = write_a1111_pt(tmp_path / "style.pt", "MyStyle", rows)
    text = load_text_encoder(personalization(tiny_sd_path, textual_inversion_path=[path]))
    for i, name in enumerate(["MyStyle", "MyStyle_1", "MyStyle_2"]):
        assert torch.equal(row(text, name), rows[i])
    # the prompt's token (any case, as the tokenizer matches it) becomes the three vectors, in order
    expanded = expand_multi_vector_tokens(text.tokenizer, "a mystyle cat")
    ids = text.tokenizer(expanded).input_ids
    wanted = [text.tokenizer.convert_tokens_to_ids(n) for n in ("MyStyle", "MyStyle_1", "MyStyle_2")]
    start = ids.index(wanted[0])
    assert ids[start:start + 3] == wanted
    plain = load_text_encoder(personalization(tiny_sd_path))
    assert (encode(text, "a MyStyle cat") - encode(plain, "a MyStyle cat")).abs().max() > 1e-2


def test_a1111_safetensors_and_diffusers_bin_formats(tiny_sd_path, personalization, tmp_path):
    a = torch.randn(1, 32, generator=torch.Generator().manual_seed(2))
    b = torch.randn(32, generator=torch.Generator().manual_seed(3))
    save_file({"emb_params": a}, str(tmp_path / "bright-style.safetensors"))  # A1111: the token is the file name
    torch.save({"<my-cat>": b}, tmp_path / "learned_embeds.bin")  # diffusers' textual_inversion.py output
    text = load_text_encoder(personalization(
        tiny_sd_path, textual_inversion_path=[str(tmp_path / "bright-style.safetensors"), str(tmp_path / "learned_embeds.bin")]
    ))
    assert torch.equal(row(text, "bright-style"), a[0])
    assert torch.equal(row(text, "<my-cat>"), b)


def _one_line_error(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for part in parts:
        assert part in message, message
    return message


def test_missing_file_and_bad_option_types_fail_before_loading(tiny_sd_path, personalization, tmp_path):
    with pytest.raises(ConfigError) as e:
        personalization(tiny_sd_path, textual_inversion_path=str(tmp_path / "nope.safetensors"))
    _one_line_error(e, "system.guidance.textual_inversion_path=", "nope.safetensors", "does not exist")
    with pytest.raises(ConfigError) as e:
        personalization(tiny_sd_path, prefix="system.prompt_processor.", lora_path=str(tmp_path / "none.safetensors"))
    _one_line_error(e, "system.prompt_processor.lora_path=", "does not exist")
    with pytest.raises(ConfigError) as e:
        personalization(tiny_sd_path, textual_inversion_path=5)
    _one_line_error(e, "system.guidance.textual_inversion_path=5", "list of paths")
    with pytest.raises(ConfigError) as e:
        personalization(tiny_sd_path, lora_scale="strong")
    _one_line_error(e, "system.guidance.lora_scale", "finite number")


def test_sd15_wide_token_on_the_sd21_wide_encoder_names_both_widths(sd21_width_path, personalization, tmp_path):
    path, _ = write_lucid_dreamer_token(tmp_path / "sd15.safetensors", "<old-token>", 768)
    with pytest.raises(ConfigError) as e:
        load_text_encoder(personalization(sd21_width_path, prefix="system.prompt_processor.", textual_inversion_path=path))
    _one_line_error(e, "system.prompt_processor.textual_inversion_path=", "'<old-token>' is 768-wide", "SD 1.x",
                    "takes 1024-wide")


def test_token_already_in_the_vocabulary_or_loaded_twice(tiny_sd_path, personalization, tmp_path):
    save_file({"a": torch.randn(32)}, str(tmp_path / "word.safetensors"))  # "a" is a word of the tokenizer
    with pytest.raises(ConfigError) as e:
        load_text_encoder(personalization(tiny_sd_path, textual_inversion_path=str(tmp_path / "word.safetensors")))
    _one_line_error(e, "token 'a' is already in the tokenizer's vocabulary", "rename the token")
    first, _ = write_lucid_dreamer_token(tmp_path / "one.safetensors", "<dup>", 32)
    second, _ = write_lucid_dreamer_token(tmp_path / "two.safetensors", "<dup>", 32, seed=1)
    with pytest.raises(ConfigError) as e:
        load_text_encoder(personalization(tiny_sd_path, textual_inversion_path=[first, second]))
    _one_line_error(e, "token '<dup>' is also loaded from", "one.safetensors")


def test_unknown_or_unreadable_files_name_the_formats_read(tiny_sd_path, personalization, tmp_path):
    save_file({"x": torch.randn(32), "y": torch.randn(32)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ConfigError) as e:
        load_text_encoder(personalization(tiny_sd_path, textual_inversion_path=str(tmp_path / "two.safetensors")))
    _one_line_error(e, "is not a textual inversion file this plugin reads", "A1111")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ConfigError) as e:
        load_text_encoder(personalization(tiny_sd_path, textual_inversion_path=str(tmp_path / "junk.safetensors")))
    _one_line_error(e, "junk.safetensors", "not a readable safetensors file")
    (tmp_path / "junk.pt").write_bytes(b"neither")
    with pytest.raises(ConfigError) as e:
        load_text_encoder(personalization(tiny_sd_path, lora_path=str(tmp_path / "junk.pt")))
    _one_line_error(e, "system.guidance.lora_path=", "not a readable safetensors or torch file")


@pytest.mark.slow
def test_lucid_dreamer_token_in_a_full_size_sd21_text_encoder(tmp_path, personalization):
    """The real width and depth: SD 2.1's 23-layer, 1024-wide OpenCLIP text tower (random weights, 340M
    parameters, about 1.4 GB), the token file as LucidDreamer ships it."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from threestudio_lucid.tiny_pipeline import SD21_BASE_TEXT_CONFIG, build_tiny_tokenizer, write_vocabulary_files

    folder = tmp_path / "sd21-text"
    tokenizer = build_tiny_tokenizer()
    config = dict(SD21_BASE_TEXT_CONFIG, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                  eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(**config)).save_pretrained(folder / "text_encoder")
    tokenizer.save_pretrained(folder / "tokenizer")
    write_vocabulary_files(str(folder / "tokenizer"))
    path, tensor = write_lucid_dreamer_token(tmp_path / "step_inv_1000.safetensors", "<Taylor_Swift>", 1024)
    text = load_text_encoder(personalization(folder, textual_inversion_path=path))
    assert text.text_encoder.config.num_hidden_layers == 23
    assert torch.equal(row(text, "<Taylor_Swift>"), tensor)
    plain = load_text_encoder(personalization(folder))
    assert (encode(text, PROMPT) - encode(plain, PROMPT)).abs().max() > 1e-2
