"""kinetics-prep: an Apache Beam pipeline that prepares the Kinetics datasets."""
from setuptools import setup

setup(
    name="kinetics-prep",
    version="0.1.0",
    description="Apache Beam pipeline preparing Kinetics (400/600/700/700-2020) for training",
    long_description=open("README.md", encoding="utf-8").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["pipeline", "transforms", "pipeline.configs"],
    package_dir={"pipeline.configs": "configs"},
    package_data={"pipeline.configs": ["*.yaml", "*.txt"]},
    install_requires=[
        "apache-beam[gcp]>=2.77.0,<3",
        "av>=14,<20",
        "imageio-ffmpeg>=0.8,<1",
        "opencv-contrib-python-headless>=4.10,<6",
        "fsspec>=2024.6.0",
        "gcsfs>=2024.6.0",
        "numpy>=1.24",
        "pyyaml>=6",
        "yt-dlp[default,deno]>=2026.10.21",
    ],
    extras_require={"test": ["pytest>=8", "pytest-xdist>=3.6,<4", "gcp-storage-emulator>=2026.7,<2027",
                             "webdataset>=1.0,<2"]},
    entry_points={"console_scripts": ["kinetics-prep=pipeline.cli:main"]},
)
