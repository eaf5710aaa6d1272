"""Where each output of a clip lives under --output (MMAction2's layout)."""
import dataclasses

from transforms.storage import join


@dataclasses.dataclass(frozen=True)
class Layout:
    root: str
    flat: bool = False
    scale: int = 256
    dense: bool = True

    def rel_in(self, top, clip, suffix=""):
        name = clip.clip_id + suffix
        return f"{top}/{name}" if self.flat else f"{top}/{clip.class_dir}/{name}"

    def video(self, clip):
        return self.rel_in(f"videos_{clip.split}", clip, ".mp4")

    def resized(self, clip):
        top = f"videos_{clip.split}_{self.scale}p" + ("_dense_cache" if self.dense else "")
        return self.rel_in(top, clip, ".mp4")

    def rawframes(self, clip):
        return self.rel_in(f"rawframes_{clip.split}", clip)

    def in_list(self, clip):
        """The clip's path as MMAction2's file lists write it (relative to the split folder)."""
        return clip.clip_id if self.flat else f"{clip.class_dir}/{clip.clip_id}"

    def url(self, rel):
        return join(self.root, rel)
