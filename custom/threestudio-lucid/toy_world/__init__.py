"""Toy world: procedural 3D objects with known ground truth and an exact diffusion prior over their
renders, behind the interfaces the guidance uses for Stable Diffusion (see issue 7).

- ``objects``: the objects, their appearance variants and the analytic ray-casting renderer;
- ``dataset``: the captioned render set (training views) and held-out ground-truth views, cached;
  the multi-modal (``variants``), biased (``view_distribution``) and view-word-free
  (``caption_views``) worlds of ``docs/toy_worlds.md``;
- ``prior``: ``ToyAutoencoder`` (VAE-like) and ``ToyDenoiser`` (UNet-like, the exact optimal
  noise prediction of a Gaussian mixture centred on the renders, conditioned on text by caption);
- ``pipeline``: ``build_toy_world`` writes a model folder, a Stable Diffusion folder whose
  ``model_index.json`` names the prior's ``ToyDenoiser`` and ``ToyAutoencoder`` as its UNet and VAE, so
  diffusers' own loader (the guidance's generic ``load_stable_diffusion``) loads it;
  ``load_toy_world_pipeline`` does the same; console entry ``lucid-build-toy-world``;
- ``evaluate``: scores of an asset against the ground truth (PSNR, IoU, sharpness, Janus and, on a
  multi-modal world, the nearest variant and view consistency);
- ``structure_metrics``: scores that read structure, not brightness (identity, sharpness, consistency,
  Janus on held-out back views, view diversity; issue 27); ``positive_controls``: assets whose right
  score is known (a two-faced penguin, blends, blurs, flat discs, a brightness change) and whether a
  metric separates them; ``verdicts``: the claims benchmark's paired-seed verdict rule;
- ``evaluator``: ``lucid-toy-world-evaluator``, the evaluation hook a world folder names for
  ``system.toy_world_eval`` (the system finds it through the folder, not by name);
- ``oracle``: ``lucid-toy-world-oracle``, the oracle fit (an image loss against the true renders in place
  of the guidance: each score's ceiling for a run's splats, cameras and budget).

Importing the package registers the evaluator and the oracle.
"""
from . import evaluator, oracle  # noqa: F401,E402  (register lucid-toy-world-evaluator and lucid-toy-world-oracle)
