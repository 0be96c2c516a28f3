"""Frame-level AVA mAP@0.5 against cases worked out by hand (numbers in the comments).

Boxes are in arbitrary units (IoU is scale-free) so that the overlaps are exact fractions.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from zeroi2v.engine.evaluation.ava_map import (
    Detection,
    GroundTruth,
    average_precision,
    frame_map,
    ground_truth_of,
)

F1, F2, F3 = ("vid", 902), ("vid", 903), ("vid", 904)
A = (0.0, 0.0, 8.0, 10.0)
B = (2.0, 0.0, 10.0, 10.0)  # IoU(A, B) = 60 / 100
FAR = (20.0, 20.0, 30.0, 30.0)  # overlaps nothing


def test_average_precision_uses_the_precision_envelope():
    # ranked TP FP TP FP, 3 GT: precision 1, 1/2, 2/3, 1/2; recall 1/3, 1/3, 2/3, 2/3
    # envelope 1, 2/3, 2/3, 1/2 → AP = 1/3·1 + 1/3·2/3 = 5/9 (the 3rd GT was never found)
    ap = average_precision(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, 0, 1, 0], bool), 3)
    assert ap == pytest.approx(5 / 9)
    assert math.isnan(average_precision(np.array([]), np.array([], bool), 0))
    assert average_precision(np.array([]), np.array([], bool), 2) == 0.0


def test_one_class_two_people():
    gt = [GroundTruth(F1, A, 1), GroundTruth(F1, FAR, 1)]
    dets = [Detection(F1, A, 1, 0.9), Detection(F1, B, 1, 0.8), Detection(F1, FAR, 1, 0.7)]
    # 0.9 → A: TP. 0.8 → its best GT is A (0.6), taken: FP. 0.7 → FAR: TP.
    # precision 1, 1/2, 2/3; recall 1/2, 1/2, 1 → AP = 1/2·1 + 1/2·2/3 = 5/6
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(5 / 6)


def test_greedy_voc_rule_does_not_fall_back_to_the_second_best_box():
    near_a = (0.0, 0.0, 9.0, 10.0)  # IoU 80/90 with A, 70/100 with B: best A
    gt = [GroundTruth(F1, A, 1), GroundTruth(F1, B, 1)]
    dets = [Detection(F1, A, 1, 0.9), Detection(F1, near_a, 1, 0.8)]
    # the 0.8 detection is an FP although B is free and overlaps it by 0.7:
    # TP, FP over 2 GT → AP = 1/2·1 = 1/2 (a "best free box" rule would give 1)
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(0.5)


def test_detections_are_matched_by_score_not_input_order():
    gt = [GroundTruth(F1, A, 1)]
    dets = [Detection(F1, A, 1, 0.5), Detection(F1, A, 1, 0.9)]
    # 0.9 takes A (TP), 0.5 is a duplicate (FP): ranked TP, FP → AP 1 (input order: 1/2)
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(1.0)


def test_unlabelled_frames_excluded_frames_and_classes_without_ground_truth():
    gt = [GroundTruth(F1, A, 1), GroundTruth(F1, A, 3), GroundTruth(F3, A, 1)]
    dets = [
        Detection(F2, A, 1, 0.9),  # a keyframe absent from the ground truth
        Detection(F1, A, 1, 0.6),  # TP
        Detection(F3, FAR, 1, 0.95),  # excluded frame: ignored, as is its ground truth
        Detection(F1, A, 2, 0.5),  # class 2 has no ground truth: AP NaN, not averaged
    ]
    result = frame_map(gt, dets, [1, 2, 3], excluded=[F3])
    # official: F2's detection is ignored → class 1: TP(0.6), 1 GT → AP 1
    # class 3: one GT, no detection → AP 0;  mean over classes 1 and 3 = 1/2
    assert result.per_class[1] == pytest.approx(1.0)
    assert math.isnan(result.per_class[2])
    assert result.per_class[3] == 0.0
    assert result.mean_ap == pytest.approx(0.5)
    # mmaction2: F2's detection is an FP → class 1: FP(0.9), TP(0.6) → precision 0, 1/2 at
    # recall 0, 1 → AP 1/2;  mean = 1/4
    older = frame_map(gt, dets, [1, 2, 3], excluded=[F3], conventions="mmaction2")
    assert older.per_class[1] == pytest.approx(0.5)
    assert older.mean_ap == pytest.approx(0.25)


def test_a_keyframe_annotated_only_outside_the_label_map_is_still_in_the_ground_truth():
    # the official read_csv adds a row's keyframe to the included keys before the label filter
    gt = [GroundTruth(F1, A, 1), GroundTruth(F2, A, 7)]
    dets = [Detection(F2, A, 1, 0.9), Detection(F1, A, 1, 0.6)]
    # F2 counts: FP(0.9), TP(0.6) over 1 GT → AP 1/2
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(0.5)


def test_tied_scores_are_ranked_by_reversed_argsort():
    gt = [GroundTruth(F1, A, 1), GroundTruth(F2, FAR, 1)]
    dets = [Detection(F1, FAR, 1, 0.7), Detection(F2, FAR, 1, 0.7)]  # FP on F1, TP on F2
    # concatenated [FP, TP]; np.argsort([0.7, 0.7]) = [0, 1], reversed [1, 0]: TP, FP
    # → precision 1, 1/2 at recall 1/2, 1/2 → AP 1/2 (a stable sort, FP first, gives 1/4)
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(0.5)
    assert average_precision(np.array([0.7, 0.7]), np.array([0, 1], bool), 2) == 0.5


def test_detections_without_area_are_dropped():
    gt = [GroundTruth(F1, A, 1)]
    line = (2.0, 0.0, 2.0, 10.0)  # x2 == x1: no area
    dets = [Detection(F1, line, 1, 0.9), Detection(F1, A, 1, 0.8)]
    # dropped, not an FP: TP alone → AP 1 (as an FP first: precision 0, 1/2 → AP 1/2)
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(1.0)
    # ... but only after the cap: with room for one, the line takes the slot and is dropped
    assert frame_map(gt, dets, [1], capacity=1).mean_ap == 0.0


def test_unknown_conventions_are_refused():
    with pytest.raises(ValueError, match="conventions must be 'official' or 'mmaction2'"):
        frame_map([], [], [1], conventions="voc")


def test_classes_outside_the_label_map_are_ignored():
    gt = [GroundTruth(F1, A, 1), GroundTruth(F1, A, 7)]
    dets = [Detection(F1, A, 1, 0.9), Detection(F1, FAR, 7, 0.9)]
    assert frame_map(gt, dets, [1]).mean_ap == pytest.approx(1.0)


def test_only_the_top_detections_of_a_frame_count():
    gt = [GroundTruth(F1, A, 1)]
    dets = [Detection(F1, FAR, 2, 0.9), Detection(F1, FAR, 2, 0.8), Detection(F1, A, 1, 0.1)]
    # capacity 2 keeps the two class-2 detections: class 1's TP is gone → AP(1) = 0
    assert frame_map(gt, dets, [1, 2], capacity=2).per_class[1] == 0.0
    assert frame_map(gt, dets, [1, 2], capacity=3).per_class[1] == pytest.approx(1.0)
    # classes outside the label map are dropped before the cap (as the official read_csv)
    assert frame_map(gt, dets, [1], capacity=2).per_class[1] == pytest.approx(1.0)


def test_a_person_with_two_actions_is_two_ground_truth_boxes():
    gt = ground_truth_of(F1, [A, FAR], [[1, 2], [2]])
    assert len(gt) == 3
    dets = [Detection(F1, A, 1, 0.9), Detection(F1, A, 2, 0.8), Detection(F1, B, 2, 0.7)]
    # class 1: TP → AP 1. class 2 (2 GT: A, FAR): TP(0.8), FP(0.7, its best A is taken)
    # → precision 1, 1/2 at recall 1/2, 1/2 → AP 1/2. mean = 3/4
    result = frame_map(gt, dets, [1, 2])
    assert result.per_class == {1: pytest.approx(1.0), 2: pytest.approx(0.5)}
    assert result.mean_ap == pytest.approx(0.75)
