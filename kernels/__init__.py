"""Fused MAE kernels (Triton) with torch references; imported as maws_scale.kernels."""
