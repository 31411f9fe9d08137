"""Class-folder datasets: what counts as a class and an image, bad trees, the seeded split."""

from __future__ import annotations

import numpy as np
import pytest
from train_data import class_tree, write_image

from mobilevec.data.datasets import (
    DatasetError,
    read_class_folders,
    split_dataset,
    stratified_split,
)


def test_each_sub_folder_is_a_class_in_sorted_order(tmp_path):
    class_tree(tmp_path, per_class=2)
    (tmp_path / "red" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "green" / "deeper" / "x.PNG", (0, 200, 0), 1)
    data = read_class_folders(tmp_path)
    assert data.class_names == ["blue", "green", "red"]
    assert data.counts() == {"blue": 2, "green": 3, "red": 2}
    assert all(p.suffix.lower() == ".png" for p in data.paths)
    assert [data.class_names[i] for i in data.labels] == [p.relative_to(tmp_path).parts[0]
                                                           for p in data.paths]


def test_empty_class_folder_is_an_error_naming_it(tmp_path):
    class_tree(tmp_path, per_class=2)
    (tmp_path / "yellow").mkdir()
    (tmp_path / "yellow" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="yellow"):
        read_class_folders(tmp_path)


def test_single_class_is_an_error(tmp_path):
    class_tree(tmp_path, per_class=3, classes={"only": (1, 2, 3)})
    with pytest.raises(DatasetError, match="only one class"):
        read_class_folders(tmp_path)


def test_folder_without_images_is_an_error(tmp_path):
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "data.csv").write_text("1,2\n")
    with pytest.raises(DatasetError, match="no image files"):
        read_class_folders(tmp_path)


def test_missing_folder_and_loose_images_are_errors(tmp_path):
    with pytest.raises(DatasetError, match="not a folder"):
        read_class_folders(tmp_path / "nope")
    class_tree(tmp_path, per_class=2)
    write_image(tmp_path / "stray.png", (0, 0, 0), 0)
    with pytest.raises(DatasetError, match="belong to no class"):
        read_class_folders(tmp_path)


def test_unknown_class_folder_against_given_classes_is_an_error(tmp_path):
    class_tree(tmp_path, per_class=2)
    with pytest.raises(DatasetError, match="'red' is not one of"):
        read_class_folders(tmp_path, ["blue", "green"])
    data = read_class_folders(tmp_path, ["red", "green", "blue", "purple"])
    assert data.counts() == {"red": 2, "green": 2, "blue": 2, "purple": 0}


def test_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(5), 60)
    train, val = stratified_split(labels, 1 / 3, seed=0)
    assert len(train) == 200 and len(val) == 100
    assert set(train).isdisjoint(val) and len(set(train) | set(val)) == 300
    assert np.bincount(labels[val]).tolist() == [20] * 5
    again, _ = stratified_split(labels, 1 / 3, seed=0)
    other, _ = stratified_split(labels, 1 / 3, seed=1)
    assert np.array_equal(train, again) and not np.array_equal(train, other)


def test_split_keeps_every_class_on_both_sides(tmp_path):
    class_tree(tmp_path, per_class=2)
    train, val = split_dataset(read_class_folders(tmp_path), 0.9, seed=3)
    assert train.counts() == val.counts() == {"blue": 1, "green": 1, "red": 1}


def test_split_of_a_class_with_one_image_names_it(tmp_path):
    class_tree(tmp_path, per_class=3)
    write_image(tmp_path / "lonely" / "one.png", (9, 9, 9), 0)
    with pytest.raises(DatasetError, match=r"lonely \(1\)"):
        split_dataset(read_class_folders(tmp_path), 0.2, seed=0)
