
import cv2
import numpy as np
import pytest

from samples import jpeg_declaring
from perception.sources import (
    ImageFolderSource, RecordingSource, SourceConfig, SourceError, SyntheticSource, VideoFileSource, open_source, read_frame_index,
)


def test_video_frames_come_in_order_with_media_time(tiny_video):
    with VideoFileSource(tiny_video) as source:
        assert source.fps == pytest.approx(20.0)
        items = []
        while (item := source.read()) is not None:
            items.append(item)
    assert [read_frame_index(f) for f, _ in items] == list(range(20))
    assert [t for _, t in items][:3] == [0, 50_000_000, 100_000_000]


def test_video_decodes_in_place_into_a_given_buffer(tiny_video):
    with VideoFileSource(tiny_video) as source:
        first, _ = source.read()
        buffer = np.zeros_like(first)
        frame, _ = source.read(buffer)
        assert frame is buffer and read_frame_index(buffer) == 1


def test_looping_video_keeps_media_time_increasing(tiny_video):
    with VideoFileSource(tiny_video, loop=True) as source:
        times = [source.read()[1] for _ in range(45)]
    assert all(b > a for a, b in zip(times, times[1:]))


def test_missing_video_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(SourceError, match=r"nope.mp4: file not found$"):
        VideoFileSource(tmp_path / "nope.mp4")


def test_corrupt_video_is_one_line_naming_the_file(tmp_path):
    path = tmp_path / "junk.avi"
    path.write_bytes(b"RIFF\x00\x00\x00\x00AVI junk" * 500)
    with pytest.raises(SourceError, match=r"junk.avi: (cannot open|no frame could be decoded)"):
        VideoFileSource(path)


def test_truncated_video_ends_early_and_counts_the_damage(tmp_path, tiny_video):
    data = tiny_video.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: len(data) // 2])
    with VideoFileSource(cut) as source:
        frames = 0
        while source.read() is not None:
            frames += 1
    assert 0 < frames < 20


def test_image_folder_skips_undecodable_files_and_counts_them(tmp_path):
    for i in range(3):
        cv2.imwrite(str(tmp_path / f"{i:02d}.png"), np.full((20, 30, 3), i * 50, np.uint8))
    (tmp_path / "01b.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "01c.jpg").write_bytes(jpeg_declaring(60_000, 60_000))  # a decompression bomb: never decoded
    with ImageFolderSource(tmp_path, fps=10, loop=False) as source:
        means = []
        while (item := source.read()) is not None:
            means.append(int(item[0].mean()))
    assert means == [0, 50, 100] and source.bad_frames == 2


def test_empty_image_folder_is_an_error(tmp_path):
    with pytest.raises(SourceError, match="no images"):
        ImageFolderSource(tmp_path, fps=None, loop=False)


@pytest.mark.parametrize("loop", [False, True])
def test_a_folder_of_only_undecodable_images_is_an_error_not_an_empty_run(tmp_path, loop):
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i:02d}.jpg").write_bytes(np.random.default_rng(i).bytes(500))
    with ImageFolderSource(folder, fps=10, loop=loop) as source:
        with pytest.raises(SourceError, match=r"images: none of its 3 images could be decoded \(first: 00.jpg\)$"):
            source.read()
    assert source.bad_frames == 3


def test_a_recording_without_frames_is_an_error_not_an_empty_run(tmp_path):
    from perception.recording import RecordingWriter
    from perception.topics import DECISIONS
    from samples import all_messages

    path = tmp_path / "detections_only.mcap"
    with RecordingWriter(path) as writer:
        writer.write(DECISIONS, all_messages()[3], log_time_ns=1)
    with RecordingSource(path, loop=False) as source:
        with pytest.raises(SourceError, match=r"detections_only.mcap: no frames in it$"):
            source.read()


def test_synthetic_frames_carry_their_index():
    source = SyntheticSource(64, 48, fps=30, count=300, loop=False)
    indices = [read_frame_index(source.read()[0]) for _ in range(300)]
    assert indices == list(range(300)) and source.read() is None


def test_source_config_requires_a_path_for_files():
    with pytest.raises(ValueError, match="needs a path"):
        SourceConfig(kind="video")
    assert isinstance(open_source(SourceConfig(kind="synthetic", width=32, height=24)), SyntheticSource)


def test_a_frame_larger_than_any_frame_may_be_is_named_not_a_traceback(tmp_path):
    """Issue 16 item 9: a frame side over 16,384 ended in a traceback when its header was built."""
    from helpers import make_video

    wide = np.zeros((2, 16400, 3), np.uint8)
    cv2.imwrite(str(tmp_path / "00.png"), np.full((20, 30, 3), 50, np.uint8))
    cv2.imwrite(str(tmp_path / "01.png"), wide)
    with ImageFolderSource(tmp_path, fps=10, loop=False) as source:
        sizes = []
        while (item := source.read()) is not None:
            sizes.append(item[0].shape)
    assert sizes == [(20, 30, 3)] and source.bad_frames == 1
    video = make_video(tmp_path / "wide.avi", frames=2, size=(16400, 16))
    with pytest.raises(SourceError, match=r"wide.avi: frames of 16400x16 exceed the largest side a frame may have, 16384"):
        VideoFileSource(video)
