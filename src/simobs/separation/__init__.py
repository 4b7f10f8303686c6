"""Diffusion-based component separation (Heurtel-Depeiges et al. 2023, arXiv:2310.16285).

An observation ``y = dust + σ·cmb`` is a state of a variance-preserving diffusion whose
noise is coloured by the CMB power spectrum; reversing it from ``t*(σ)`` samples the
dust posterior ``p(dust | y)`` under a score-model prior learned from dust maps.

Modules, one job each: :mod:`.spectra` (camb → flat-sky 2-D power), :mod:`.fields`
(Gaussian / log-normal / FITS maps), :mod:`.dataset` (the HDF5 files of the stage),
:mod:`.sde` (β schedule, t*(σ), coloured noise), :mod:`.unet`, :mod:`.model`,
:mod:`.train` (denoising score matching with resume), :mod:`.sample` (Euler–Maruyama,
probability-flow ODE, Tweedie), :mod:`.wiener` (baseline and exact Gaussian predictor),
:mod:`.metrics`, :mod:`.evaluate`, :mod:`.figures`.
"""
