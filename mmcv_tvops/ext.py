"""The module served as `mmcv._ext` without a compiled mmcv: mmcv 2.1.0's op names, over torchvision's kernels.

Follows the calling convention of mmcv 2.1.0's C++ ops (`mmcv/ops/csrc/pytorch/pybind.cpp`): outputs are preallocated
by the Python side and filled in place, keyword names as mmcv's `mmcv/ops/*.py` pass them. Implemented, on CPU and
CUDA, from `torchvision.ops` (the same aligned bilinear RoIAlign of Mask R-CNN / Detectron2, and greedy NMS):

* `nms`: kept indices in descending score order, as mmcv's kernels return them;
* `roi_align_forward` / `roi_align_backward`: average pooling (mmcv's `pool_mode=1`), `aligned` true or false, any
  sampling ratio; the gradient is torchvision's own backward kernel;
* `get_compiler_version` / `get_compiling_cuda_version`: what mmcv's `collect_env` prints.

Every other name of the 112 that mmcv 2.1.0's ops assert exists, and raises `NotImplementedError` naming the op when
called: mmdet and mmseg import them all, and use only a few.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

import torch
import torchvision
from torch import Tensor
from torchvision.ops import nms as _tv_nms
from torchvision.ops import roi_align as _tv_roi_align

IMPLEMENTED = ("nms", "roi_align_forward", "roi_align_backward", "get_compiler_version", "get_compiling_cuda_version")
# Every name that mmcv 2.1.0's `mmcv/ops/*.py` asks `load_ext('_ext', ...)` for, apart from IMPLEMENTED
# (tests/test_mmcv_tvops.py reads the installed mmcv's sources and checks that none is missing).
NEEDS_COMPILED = (
    "active_rotated_filter_backward", "active_rotated_filter_forward", "assign_score_withk_backward",
    "assign_score_withk_forward", "ball_query_forward", "bbox_overlaps", "bezier_align_backward",
    "bezier_align_forward", "bias_act", "border_align_backward", "border_align_forward", "box_iou_quadri",
    "box_iou_rotated", "carafe_backward", "carafe_forward", "carafe_naive_backward", "carafe_naive_forward",
    "chamfer_distance_backward", "chamfer_distance_forward", "contour_expand", "convex_giou", "convex_iou",
    "correlation_backward", "correlation_forward", "deform_conv_backward_input", "deform_conv_backward_parameters",
    "deform_conv_forward", "deform_roi_pool_backward", "deform_roi_pool_forward",
    "diff_iou_rotated_sort_vertices_forward", "dynamic_point_to_voxel_backward", "dynamic_point_to_voxel_forward",
    "dynamic_voxelize_forward", "filtered_lrelu", "filtered_lrelu_act_", "furthest_point_sampling_forward",
    "furthest_point_sampling_with_dist_forward", "fused_bias_leakyrelu", "fused_indice_conv_forward",
    "gather_points_backward", "gather_points_forward", "get_indice_pairs_2d_backward", "get_indice_pairs_2d_forward",
    "get_indice_pairs_3d_backward", "get_indice_pairs_3d_forward", "get_indice_pairs_4d_forward",
    "group_points_backward", "group_points_forward", "hard_voxelize_forward", "indice_conv_backward",
    "indice_conv_forward", "indice_maxpool_backward", "indice_maxpool_forward", "iou3d_boxes_overlap_bev_forward",
    "iou3d_nms3d_forward", "iou3d_nms3d_normal_forward", "knn_forward", "masked_col2im_forward",
    "masked_im2col_forward", "min_area_polygons", "modulated_deform_conv_backward", "modulated_deform_conv_forward",
    "ms_deform_attn_backward", "ms_deform_attn_forward", "nms_match", "nms_quadri", "nms_rotated", "pixel_group",
    "points_in_boxes_all_forward", "points_in_boxes_cpu_forward", "points_in_boxes_part_forward",
    "points_in_polygons_forward", "prroi_pool_backward", "prroi_pool_coor_backward", "prroi_pool_forward",
    "psamask_backward", "psamask_forward", "riroi_align_rotated_backward", "riroi_align_rotated_forward",
    "roi_align_rotated_backward", "roi_align_rotated_forward", "roi_pool_backward", "roi_pool_forward",
    "roiaware_pool3d_backward", "roiaware_pool3d_forward", "roipoint_pool3d_forward", "rotated_feature_align_backward",
    "rotated_feature_align_forward", "sigmoid_focal_loss_backward", "sigmoid_focal_loss_forward",
    "softmax_focal_loss_backward", "softmax_focal_loss_forward", "softnms", "stack_ball_query_forward",
    "stack_group_points_backward", "stack_group_points_forward", "sync_bn_backward_data", "sync_bn_backward_param",
    "sync_bn_forward_mean", "sync_bn_forward_output", "sync_bn_forward_var", "three_interpolate_backward",
    "three_interpolate_forward", "three_nn_forward", "tin_shift_backward", "tin_shift_forward", "upfirdn2d",
)
__all__ = [*IMPLEMENTED, *NEEDS_COMPILED]
_AVG_POOL = 1  # mmcv's pool_mode: 0 max, 1 avg


class NeedsCompiledMmcv(NotImplementedError):
    """An mmcv op, or an option of one, that only mmcv's compiled `_ext` provides."""

    def __init__(self, what: str) -> None:
        super().__init__(
            f"mmcv op {what} needs the compiled mmcv 2.1.0: this environment's mmcv._ext comes from mmcv_tvops "
            f"(torchvision's kernels), which provides only {', '.join(IMPLEMENTED[:3])}. Install an mmcv 2.1.0 wheel "
            f"with ops built for this torch (scripts/setup_env.sh installs one from HARNESS_WHEELHOUSE=DIR)"
        )


def _needs_compiled(name: str) -> Callable[..., NoReturn]:
    def op(*args: object, **kwargs: object) -> NoReturn:
        raise NeedsCompiledMmcv(repr(name))

    op.__name__ = op.__qualname__ = name
    op.__doc__ = f"mmcv's {name}: not available without the compiled mmcv (raises NeedsCompiledMmcv)."
    return op


for _name in NEEDS_COMPILED:
    globals()[_name] = _needs_compiled(_name)


def nms(bboxes: Tensor, scores: Tensor, iou_threshold: float, offset: int) -> Tensor:
    """Indices of the kept boxes ([K] int64), highest score first; a box goes when its IoU with a kept one is
    > iou_threshold. `offset` 1 is mmcv's legacy pixel convention (width = x2 - x1 + 1): x2, y2 move by 1."""
    if offset not in (0, 1):
        raise ValueError(f"nms: offset must be 0 or 1, not {offset!r}")
    boxes = bboxes if offset == 0 else torch.cat([bboxes[:, :2], bboxes[:, 2:] + offset], dim=1)  # [N, 4]
    return _tv_nms(boxes, scores.to(boxes.dtype), float(iou_threshold))


def _check_avg(op: str, pool_mode: int) -> None:
    if pool_mode != _AVG_POOL:
        raise NeedsCompiledMmcv(f"{op!r} with pool_mode='max'")


def roi_align_forward(
    input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor, argmax_x: Tensor, aligned_height: int,
    aligned_width: int, spatial_scale: float, sampling_ratio: int, pool_mode: int, aligned: bool,
) -> None:
    """Fills `output` [K, C, aligned_height, aligned_width] from `input` [N, C, H, W] and `rois` [K, 5] (batch index,
    x1, y1, x2, y2). argmax_y / argmax_x are max pooling's and stay untouched."""
    _check_avg("roi_align_forward", pool_mode)
    dtype = torch.promote_types(input.dtype, rois.dtype)  # torchvision wants one dtype; never round the boxes down
    pooled = _tv_roi_align(input.to(dtype), rois.to(dtype), (aligned_height, aligned_width), spatial_scale,
                           sampling_ratio, aligned)
    output.copy_(pooled)


def roi_align_backward(
    grad_output: Tensor, rois: Tensor, argmax_y: Tensor, argmax_x: Tensor, grad_input: Tensor, aligned_height: int,
    aligned_width: int, spatial_scale: float, sampling_ratio: int, pool_mode: int, aligned: bool,
) -> None:
    """Adds the gradient for `input` [N, C, H, W] to `grad_input`, from `grad_output` [K, C, aligned_height,
    aligned_width]. RoIAlign is linear in its input, so torchvision's backward kernel is reached through autograd of
    its forward at a zero input of the right shape (public API only; the extra forward is cheap next to the heads)."""
    _check_avg("roi_align_backward", pool_mode)
    dtype = torch.promote_types(grad_output.dtype, rois.dtype)
    with torch.enable_grad():  # mmcv calls this inside a Function's backward, where grad mode is off
        probe = torch.zeros(grad_input.shape, dtype=dtype, device=grad_input.device, requires_grad=True)
        pooled = _tv_roi_align(probe, rois.to(dtype), (aligned_height, aligned_width), spatial_scale, sampling_ratio,
                               aligned)
        (grad,) = torch.autograd.grad(pooled, probe, grad_output.to(dtype))
    grad_input.add_(grad)  # mmcv's kernels accumulate into the zeros they are given


def get_compiler_version() -> str:
    return f"none (mmcv_tvops: torchvision {torchvision.__version__} ops)"


def get_compiling_cuda_version() -> str:
    return torch.version.cuda or "not available"
