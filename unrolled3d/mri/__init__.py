"""3D multi-coil Cartesian MRI: the operator, sampling masks, coil maps, classical reconstructions, readers."""
from .acquisitions import MaskBank
from .coils import birdcage_maps, estimate_coil_maps, root_sum_of_squares
from .io import KspaceFileError, as_measurement, read_kspace_h5, read_kspace_npy
from .physics import MultiCoilMRI3D, MultiCoilMRI3DPatch, centred_fft_phases, from_complex_image, to_complex_image
from .recon import cg_sense, zero_filled
from .sampling import acceleration, calibration_slices, variable_density_mask

__all__ = [
    "MultiCoilMRI3D", "MultiCoilMRI3DPatch", "centred_fft_phases", "to_complex_image", "from_complex_image",
    "variable_density_mask", "acceleration", "calibration_slices", "MaskBank",
    "birdcage_maps", "estimate_coil_maps", "root_sum_of_squares",
    "zero_filled", "cg_sense",
    "read_kspace_h5", "read_kspace_npy", "as_measurement", "KspaceFileError",
]
