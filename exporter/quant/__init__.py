"""The quantized cache's design: bits per latent component, steps, and what they cost, from calibration.

    theory.py           the Gaussian limit: reverse water-filling, the rate-distortion bound, ideal bit allocation
    scales.py           each component's sigma and metric weight; static steps fitted to calibration samples
    allocation.py       integer bits within a byte budget: spectral (water-filling) or uniform
    probe.py            measured sensitivity: KL per unit of predicted error, one tensor coded at a time
    design.py           quantize_projectors: projectors whose codecs carry bits, scales and the sink's latent
    rate_distortion.py  achieved error per tensor against the Gaussian bound (printed by `make validate`)
"""
