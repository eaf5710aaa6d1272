"""Layout: the one place a clip's paths and file names are built."""
from transforms import filelists, layout, shards, video
from transforms.layout import Layout
from transforms.records import Clip

CLIP = Clip("val", "hurling (sport)", 161, "hurling_(sport)", "ntuclip0000", 0.0, 3.0, "ntuclip0000_000000_000003",
            "val.csv", 5, (0, 5))


def test_clip_paths_in_both_layouts():
    tree, flat = Layout("gs://b/out"), Layout("/out", flat=True, scale=128, dense=False)
    assert tree.video(CLIP) == "videos_val/hurling_(sport)/ntuclip0000_000000_000003.mp4"
    assert tree.resized(CLIP) == "videos_val_256p_dense_cache/hurling_(sport)/ntuclip0000_000000_000003.mp4"
    assert tree.rawframes(CLIP) == "rawframes_val/hurling_(sport)/ntuclip0000_000000_000003"
    assert flat.video(CLIP) == "videos_val/ntuclip0000_000000_000003.mp4"
    assert flat.resized(CLIP) == "videos_val_128p/ntuclip0000_000000_000003.mp4"
    assert flat.rawframes(CLIP) == "rawframes_val/ntuclip0000_000000_000003"
    assert tree.url(tree.video(CLIP)) == "gs://b/out/videos_val/hurling_(sport)/ntuclip0000_000000_000003.mp4"


def test_list_lines_and_shard_keys_use_the_same_path():
    rec = CLIP.record("ok", outputs={"video": "v", "rgb": "r"}, rgb_frames=84)
    assert filelists.line(rec, "videos") == "hurling_(sport)/ntuclip0000_000000_000003.mp4 161\n"
    assert filelists.line(rec, "rawframes", flat=True) == "ntuclip0000_000000_000003 84 161\n"
    assert layout.list_path("a", "b", "videos", flat=True) == "b.mp4" and layout.list_path("a", "b", "flow") == "a/b"
    assert shards.sample_key("a.b", "c%d") == layout.shard_key("a.b", "c%d") == "a%2Eb/c%25d"
    assert layout.shard_key("a.b", "c.d", flat=True) == "c%2Ed"


def test_frame_names_agree_with_the_video_stage():
    for base in (0, 1):
        assert layout.rgb_name(base + 6) == video.frame_name("img_", 6, base) == f"img_{base + 6:05d}.jpg"
        assert layout.flow_names(base) == (video.frame_name("flow_x_", 0, base), video.frame_name("flow_y_", 0, base))
    names = layout.frame_names(2, 1, base=1)
    assert names == ["flow_x_00001.jpg", "flow_y_00001.jpg", "img_00001.jpg", "img_00002.jpg"]
    assert layout.frame_counts(names + ["other.txt", "flow_x_00002.jpg"]) == (2, 2, 1)


def test_local_source_stems_in_lookup_order():
    assert layout.source_stems(CLIP) == [("ntuclip0000_000000_000003", True),
                                         ("hurling_(sport)/ntuclip0000_000000_000003", True), ("ntuclip0000", False)]
