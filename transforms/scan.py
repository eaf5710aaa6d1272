"""The scan of an existing output tree: what it holds for a clip now, whoever made it."""
from transforms import storage
from transforms.layout import frame_counts
from transforms.plan import layout_for
from transforms.records import MISSING, ClipRecord
from transforms.video import VideoError, probe


def count_frames(layout, clip):
    """(img_ count, flow pair count, note) in the clip's rawframes dir."""
    img, fx, fy = frame_counts(storage.listdir_names(layout.url(layout.rawframes(clip))))
    if fx != fy:
        return img, 0, f"flow ignored: {fx} flow_x_ but {fy} flow_y_ files"
    return img, fx, ""


def still_there(job, settings):
    """Whether the trimmed video a job trusts (file lists alone) is still where it was recorded."""
    return bool(job.trust) and storage.exists(layout_for(settings).url(job.trust))


def existing_outputs(clip, settings, prev=None):
    """Record what the tree holds for the clip now: `exists`, else `missing`. The facts of a good
    earlier record are kept, its outputs only where they are still there."""
    layout = layout_for(settings)
    rel = layout.video(clip)
    outputs, fields, notes = {}, {}, []  # fields: probe's facts
    try:
        fields = probe(layout.url(rel), clip.duration, full=settings.outputs.verify == "full",
                       min_ratio=settings.video.min_duration_ratio)
        outputs["video"] = rel
    except VideoError as e:
        notes.append(f"{rel}: {e.reason}")
    if storage.exists(layout.url(layout.resized(clip))):
        outputs["resized"] = layout.resized(clip)
    img, flow, note = count_frames(layout, clip)
    if note:
        notes.append(note)
    if img:
        outputs["rgb"] = layout.rawframes(clip)
    if flow:
        outputs["flow"] = layout.rawframes(clip)
    if not outputs:
        return ClipRecord.of(clip, MISSING, "; ".join(notes))
    earlier = ClipRecord.from_dict(prev) if prev else None
    return ClipRecord.in_tree(clip, earlier, "; ".join(notes), outputs, settings.outputs.verify, fields, img, flow)
