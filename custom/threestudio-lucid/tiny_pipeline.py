"""A tiny but real Stable Diffusion pipeline, built from configs, for tests and offline CPU runs.

``build_tiny_stable_diffusion(path)`` writes a diffusers folder (``model_index.json``, ``unet/``,
``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``) that loads with
``StableDiffusionPipeline.from_pretrained(path)`` and with the prompt processor's
``subfolder="tokenizer" / "text_encoder"`` loading, exactly like a downloaded checkpoint. Nothing is
fetched from a model hub: the weights are random (seeded), the tokenizer vocabulary is written here.

What is real and what is small:

- UNet: ``UNet2DConditionModel`` with two cross-attention down/up blocks, 32/64 channels.
- VAE: ``AutoencoderKL`` with four blocks, so it downsamples by 8 like SD's VAE (512 px -> 64 latents).
- Scheduler: ``DDIMScheduler`` with Stable Diffusion 2.1-base's configuration.
- Text encoder: transformers ``CLIPTextModel`` (hidden size 32, 2 layers, 77 positions).
- Tokenizer: transformers ``CLIPTokenizer`` read from a ``vocab.json`` / ``merges.txt`` written here
  (about 3,900 tokens). It splits text about as CLIP's 49k-token vocabulary does, so a prompt is
  about as long in tokens as with a real checkpoint and the 77-token limit bites where it would
  there: one token per common word of text-to-3D prompts and negative prompts
  (:data:`COMMON_WORDS`), a few for a rare word (merges of every lowercase letter pair),
  punctuation and digits apart. All 256 byte symbols are in the vocabulary, with and without the
  ``</w>`` word end, so any text tokenizes without unknown tokens. ``model_max_length`` is 77 and
  the pad token is ``<|endoftext|>``, as in the CLIP ViT-L/14 tokenizer of SD 1.x (SD 2.x's
  OpenCLIP tokenizer pads with ``!``; either works for the prompt processor, which pads to
  ``max_length``).

Console entry: ``lucid-build-tiny-sd PATH [--seed N] [--architecture tiny|sd21-base] [--fp16] [--device D]``;
``--architecture sd21-base`` writes Stable Diffusion 2.1-base's models at full size with random weights
(:func:`build_sd21_base_components`), to time real-size steps on a GPU without a download.
"""
import argparse
import contextlib
import json
import os
import tempfile

import torch

# Stable Diffusion 2.1-base's DDIM scheduler configuration (scheduler/scheduler_config.json).
SD21_BASE_SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="epsilon",
)

TEXT_MAX_LENGTH = 77
BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
WORD_END = "</w>"

# Words that become one token each, as in CLIP: the vocabulary of DreamFusion-style text-to-3D prompts
# (subjects, materials, colours, styles, view suffixes) and of their negative prompts.
COMMON_WORDS = tuple(
    """
    a an the of in on at by to for from with without and or as is are its it this that these into onto
    over under above below behind near next top bottom left right up down out off inside outside
    while made make covered dressed carved built painted filled full stack pile pair group set piece
    slice bunch one two three four five many some several very highly extremely super ultra more most

    front side back overhead view views backside

    dslr photo photograph photography picture image render rendered rendering model zoomed shot
    close closeup wide angle camera lens focus bokeh depth field studio lighting light lights lit
    sunlight shadow shadows reflection reflections detailed detail details intricate realistic
    photorealistic hyperrealistic real high quality resolution hd definition sharp clear clean crisp
    beautiful pretty cute adorable elegant majestic epic cinematic dramatic professional award winning
    trending artstation unreal engine octane blender maya concept art artwork style styled digital
    illustration painting drawing sketch cartoon anime pixar disney toy toys miniature figurine
    sculpture statue bust low poly voxel isometric stylized simple minimalist

    unrealistic blurry blur blurred ugly contrast dull oversaturation oversaturated
    saturated saturation undersaturated bad worst poor poorly lowres deformed disfigured distorted
    mutated mutation malformed extra missing duplicate duplicated cropped cut jpeg artifacts artifact
    watermark signature text logo noise noisy grainy pixelated washed overexposed underexposed
    unnatural flat shading shaded dark bright gloomy boring plain janus multiple heads faces
    asymmetric asymmetrical broken messy

    red green blue yellow orange purple pink white black brown grey gray gold golden silver
    colorful colourful rainbow pastel neon transparent translucent shiny glossy matte glowing

    wood wooden metal metallic steel iron copper bronze brass chrome aluminum plastic glass marble
    stone rock ceramic porcelain clay paper cardboard fabric cloth leather wool knitted crocheted
    fur furry fluffy feathers lego origami rubber jade ivory concrete brick ice crystal diamond
    velvet silk cotton denim

    cat cats kitten dog dogs puppy corgi beagle poodle husky retriever bulldog penguin panda bear
    teddy rabbit bunny squirrel frog toad fox owl eagle parrot lion tiger elephant horse pony pig
    piglet cow bull sheep lamb goat monkey chimpanzee gorilla raccoon koala kangaroo giraffe zebra
    mouse rat hamster duck duckling goose chicken chick rooster turtle tortoise snake lizard
    chameleon dinosaur dragon unicorn fish goldfish shark whale dolphin octopus crab lobster shrimp
    bee butterfly ladybug spider bird peacock flamingo wolf deer reindeer camel hippo rhino
    crocodile alligator sloth hedgehog otter seal walrus bat animal animals

    hamburger burger cheeseburger pizza cake cupcake donut doughnut cream cone sandwich apple
    banana strawberry pineapple watermelon cherry cherries lemon avocado carrot tomato pumpkin
    mushroom bread croissant pancake pancakes waffle cookie cookies chocolate coffee tea cup mug
    sushi taco burrito hotdog hot fries egg eggs cheese bowl plate soup ramen noodles spaghetti
    salad steak pie macaron bagel pretzel popcorn candy lollipop bacon fruit fruits vegetables
    food breakfast dessert juice milk wine beer cocktail

    cube sphere cylinder torus pyramid shape shapes
    chair table lamp car truck bus train airplane plane jet helicopter boat ship sailboat bicycle
    bike motorcycle scooter robot house castle tower temple church building bridge tree trees
    flower flowers rose tulip sunflower plant plants cactus pot vase teapot kettle book books clock
    watch guitar piano violin drum drums trumpet phone computer laptop keyboard television
    tv radio bottle jar shoe shoes sneaker sneakers boot boots hat cap helmet crown glasses
    sunglasses scarf jacket coat shirt dress sweater suit tie sword shield axe hammer skull bone
    candle lantern umbrella backpack bag basket box chest barrel bench sofa couch bed pillow ball
    balloon kite rocket spaceship tank tractor excavator bulldozer firetruck fire hydrant mailbox
    microscope telescope globe map ring necklace jewelry toaster microwave fridge oven
    stove fork spoon knife scissors pencil pen brush paint armchair desk shelf bookshelf door
    window fountain lighthouse windmill tent cottage cabin treehouse sandcastle snowman wand staff
    throne chessboard chess dice mask toolbox tool tools typewriter gramophone phonograph

    man woman boy girl child kid baby person people astronaut knight wizard witch king queen
    princess prince pirate chef soldier samurai ninja viking cowboy clown doctor scientist
    farmer sailor warrior monk ghost zombie vampire skeleton alien monster elf fairy mermaid

    head face eye eyes hair ear ears nose mouth tail wing wings leg legs arm arms hand hands feet
    foot body paw paws beak horn horns

    wearing holding sitting standing riding playing eating drinking reading writing dancing
    running jumping sleeping lying flying floating swimming walking smiling looking

    old ancient vintage retro antique modern futuristic medieval steampunk cyberpunk fantasy
    magical mythical tiny small little large big giant huge tall short round square soft hard
    smooth rough wet dry cold frozen burning happy sad angry funny scary wild new

    background scene ground floor grass water sky cloud clouds snow sand beach forest jungle
    mountain mountains hill city street road room kitchen garden park ocean sea river
    lake desert island space moon sun planet star stars night day
    """.split()
)


def _byte_symbols():
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255 (GPT-2/CLIP convention).

    Printable Latin-1 bytes stand for themselves; the others (control characters, space, ...) are
    shifted to code points from 256 upwards, in byte order.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("\u00a1"), ord("\u00ac") + 1))
        + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    )
    symbols = {}
    shifted = 0
    for byte in range(256):
        if byte in keep:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + shifted)
            shifted += 1
    return [symbols[b] for b in range(256)]


def _bpe(word, ranks):
    """Byte-pair encoding of one lowercase word as CLIP applies it: the word's characters with
    ``</w>`` on the last, then repeatedly merge every occurrence of the adjacent pair of lowest rank."""
    pieces = list(word[:-1]) + [word[-1] + WORD_END]
    while len(pieces) > 1:
        pairs = {(a, b) for a, b in zip(pieces, pieces[1:]) if (a, b) in ranks}
        if not pairs:
            break
        best = min(pairs, key=ranks.__getitem__)
        merged, i = [], 0
        while i < len(pieces):
            if i + 1 < len(pieces) and (pieces[i], pieces[i + 1]) == best:
                merged.append(pieces[i] + pieces[i + 1])
                i += 2
            else:
                merged.append(pieces[i])
                i += 1
        pieces = merged
    return pieces


def _vocabulary_merges():
    """Merges in rank order: first whole-word merges for :data:`COMMON_WORDS`, then every pair of
    lowercase letters, inside a word and at its end.

    Each common word gets merges appended (ranked after every earlier one) until it encodes to one
    piece; a merge ranked after all others cannot change a word that is already one piece, so the
    words never undo each other. The letter pairs come last, so they only split what the word
    merges leave: a rare word becomes about one token per two letters, as CLIP splits rare words
    into a few sub-word tokens.
    """
    merges, ranks = [], {}

    def add(pair):
        if pair not in ranks:
            ranks[pair] = len(merges)
            merges.append(pair)

    for word in COMMON_WORDS:
        pieces = _bpe(word, ranks)
        while len(pieces) > 1:
            add((pieces[0], pieces[1]))
            pieces = _bpe(word, ranks)
    letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    for left in letters:
        for right in letters:
            add((left, right))
            add((left, right + WORD_END))
    return merges


def tiny_clip_vocabulary():
    """``(vocab, merges)`` of the tiny CLIP tokenizer, laid out like CLIP's: byte symbols, the same
    with ``</w>``, merged pieces, then the start/end-of-text tokens."""
    symbols = _byte_symbols()
    tokens = symbols + [s + WORD_END for s in symbols]
    merges = _vocabulary_merges()
    known = set(tokens)
    for left, right in merges:
        if left + right not in known:
            known.add(left + right)
            tokens.append(left + right)
    tokens += [BOS_TOKEN, EOS_TOKEN]
    vocab = {token: index for index, token in enumerate(tokens)}
    return vocab, merges


def write_vocabulary_files(folder):
    """Write the tiny vocabulary as CLIP's ``vocab.json`` and ``merges.txt`` into ``folder``."""
    vocab, merges = tiny_clip_vocabulary()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{left} {right}\n" for left, right in merges)


def build_tiny_tokenizer():
    """A real ``CLIPTokenizer`` read from a vocab.json / merges.txt pair written to a temp folder."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory(prefix="lucid-tiny-tokenizer-") as folder:
        write_vocabulary_files(folder)
        tokenizer = CLIPTokenizer.from_pretrained(
            folder,
            model_max_length=TEXT_MAX_LENGTH,
            bos_token=BOS_TOKEN,
            eos_token=EOS_TOKEN,
            unk_token=EOS_TOKEN,
            pad_token=EOS_TOKEN,
        )
    return tokenizer


@contextlib.contextmanager
def _seeded(seed):
    """Seed torch's global generator (module initialisers use it) without disturbing the caller's."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _components(seed, tokenizer, text_config, unet_config, vae_config):
    """The pipeline's models from their configs, each initialised under its own seed derived from
    ``seed``, so the weights are a function of ``seed`` alone (and changing one model's shape leaves
    the others' weights alone); the text config gets the tokenizer's special ids."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_config = CLIPTextConfig(
        **text_config,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with _seeded(seed):
        text_encoder = CLIPTextModel(text_config)
    with _seeded(seed + 1):
        unet = UNet2DConditionModel(**unet_config)
    with _seeded(seed + 2):
        vae = AutoencoderKL(**vae_config)
    for model in (text_encoder, unet, vae):
        model.eval()
    scheduler = DDIMScheduler(**SD21_BASE_SCHEDULER_CONFIG)
    return dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler)


def build_tiny_components(seed=0, text_hidden_size=32, unet_channels=(32, 64), vae_channels=(8, 16, 32, 32)):
    """The pipeline's components as objects: ``dict(vae, text_encoder, tokenizer, unet, scheduler)``,
    the weights a function of ``seed`` alone (see ``_components``)."""
    tokenizer = build_tiny_tokenizer()
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden_size,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TEXT_MAX_LENGTH,
        projection_dim=text_hidden_size,
        hidden_act="quick_gelu",
    )
    unet_config = dict(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(unet_channels),
        layers_per_block=1,
        norm_num_groups=min(32, unet_channels[0]),
        cross_attention_dim=text_hidden_size,
        attention_head_dim=4,
    )
    vae_config = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(vae_channels),
        block_out_channels=tuple(vae_channels),
        layers_per_block=1,
        norm_num_groups=min(8, vae_channels[0]),
        latent_channels=4,
        sample_size=64,
        scaling_factor=0.18215,
    )
    return _components(seed, tokenizer, text_config, unet_config, vae_config)


# Stable Diffusion 2.1-base's architecture (unet/, vae/ and text_encoder/ config.json of
# stabilityai/stable-diffusion-2-1-base; the text encoder is OpenCLIP ViT-H/14's text tower). Random
# weights at the real size measure what a real step costs on a GPU without downloading anything.
SD21_BASE_UNET_CONFIG = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
    norm_eps=1e-5,
    flip_sin_to_cos=True,
    freq_shift=0,
    act_fn="silu",
)
SD21_BASE_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
    act_fn="silu",
    scaling_factor=0.18215,
)
SD21_BASE_TEXT_CONFIG = dict(
    vocab_size=49408,
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=TEXT_MAX_LENGTH,
    projection_dim=512,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)
# Parameter counts of the real checkpoint's models (tests check the architecture against them).
SD21_BASE_PARAMETER_COUNTS = dict(unet=865_910_724, vae=83_653_863, text_encoder=340_387_840)


def build_sd21_base_components(seed=0):
    """Stable Diffusion 2.1-base's models with random (seeded) weights, in float32 on the current
    default device (build them under ``with torch.device("cuda")`` to initialise them on a GPU, or
    ``"meta"`` to count parameters). The tokenizer is the tiny CLIP-like one: its ids are all below
    the text encoder's 49,408 (``model_max_length`` 77, as OpenCLIP's)."""
    return _components(seed, build_tiny_tokenizer(), SD21_BASE_TEXT_CONFIG, SD21_BASE_UNET_CONFIG,
                       SD21_BASE_VAE_CONFIG)


ARCHITECTURES = ("tiny", "sd21-base")


def build_stable_diffusion(path, architecture="tiny", seed=0, dtype=None, device=None, **component_kwargs):
    """Build a randomly initialised pipeline of ``architecture`` (``tiny``: :func:`build_tiny_components`,
    which takes ``component_kwargs``; ``sd21-base``: :func:`build_sd21_base_components`) and save it
    as a diffusers folder at ``path``, its weights in ``dtype`` (default float32). ``device``: where
    the weights are initialised (a GPU initialises SD 2.1-base's 1.3B parameters in seconds).
    There is no safety checker or feature extractor. Returns ``path``."""
    from diffusers import StableDiffusionPipeline

    if architecture not in ARCHITECTURES:
        raise ValueError(f"architecture={architecture!r} is not one of {', '.join(ARCHITECTURES)}")
    if architecture == "sd21-base" and component_kwargs:
        raise ValueError(f"the sd21-base architecture is fixed; got {sorted(component_kwargs)}")
    path = str(path)
    with torch.device(device or "cpu"):
        if architecture == "tiny":
            components = build_tiny_components(seed=seed, **component_kwargs)
        else:
            components = build_sd21_base_components(seed=seed)
    if dtype is not None:
        for name in ("vae", "text_encoder", "unet"):
            components[name].to(dtype)
    pipe = StableDiffusionPipeline(
        **components,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    os.makedirs(path, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    # transformers 5 saves only tokenizer.json; SD checkpoints (and transformers 4's slow
    # CLIPTokenizer) also carry vocab.json + merges.txt, so write them too.
    tokenizer_dir = os.path.join(path, "tokenizer")
    if not os.path.exists(os.path.join(tokenizer_dir, "vocab.json")):
        write_vocabulary_files(tokenizer_dir)
    return path


def build_tiny_stable_diffusion(path, seed=0, **component_kwargs):
    """Build the tiny pipeline and save it as a diffusers folder at ``path``; returns ``path``.

    ``component_kwargs`` go to :func:`build_tiny_components` (``text_hidden_size``,
    ``unet_channels``, ``vae_channels``). There is no safety checker or feature extractor.
    """
    return build_stable_diffusion(path, "tiny", seed=seed, **component_kwargs)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="lucid-build-tiny-sd",
        description=(
            "Write a tiny, randomly initialised Stable Diffusion pipeline (diffusers format) to PATH. "
            "Point pretrained_model_name_or_path (prompt processor and guidance) at it to run "
            "offline on a CPU."
        ),
    )
    parser.add_argument("path", help="output folder (created if missing)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    parser.add_argument(
        "--architecture", choices=ARCHITECTURES, default="tiny",
        help="tiny (default; CPU-sized) or sd21-base (Stable Diffusion 2.1-base's models at full size, "
        "random weights: 1.3B parameters, for timing real-size steps on a GPU)",
    )
    parser.add_argument("--fp16", action="store_true", help="save the weights in float16")
    parser.add_argument("--device", default=None, help="initialise the weights there, e.g. cuda (default cpu)")
    args = parser.parse_args(argv)
    path = build_stable_diffusion(args.path, args.architecture, seed=args.seed,
                                  dtype=torch.float16 if args.fp16 else None, device=args.device)
    print(f"{'Tiny' if args.architecture == 'tiny' else 'SD 2.1-base-sized'} Stable Diffusion pipeline "
          f"(random weights) written to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
