# Custom SDK container for Dataflow (or any portable runner with --environment_type=DOCKER):
# the Beam SDK image of the same Python and Beam versions, plus this project and its wheels
# (av and opencv-contrib-python-headless bundle FFmpeg, imageio-ffmpeg ships the ffmpeg CLI,
# yt-dlp[default,deno] the deno JS runtime), so workers install nothing at start-up.
#
#   docker build -t REGION-docker.pkg.dev/PROJECT/REPO/kinetics-prep:TAG .
#   docker push REGION-docker.pkg.dev/PROJECT/REPO/kinetics-prep:TAG
#   kinetics-prep ... --runner=DataflowRunner --sdk_container_image=REGION-docker.pkg.dev/PROJECT/REPO/kinetics-prep:TAG
ARG PY_VERSION=3.11
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python${PY_VERSION}_sdk:${BEAM_VERSION}
ARG BEAM_VERSION

WORKDIR /opt/kinetics-prep
COPY setup.py README.md ./
COPY configs configs
COPY pipeline pipeline
COPY transforms transforms

# Keep the image's Beam: the pipeline is submitted with the same version. The check runs from /,
# so it imports the installed package (and its bundled configs), not the source copy here.
RUN pip install --no-cache-dir . "apache-beam[gcp]==${BEAM_VERSION}" \
    && pip check \
    && cd / && python -c "import av, cv2, deno, imageio_ffmpeg, yt_dlp, pipeline.build; \
from pipeline.options import builtin_config; builtin_config('kinetics400'); \
assert not pipeline.build.__file__.startswith('/opt/kinetics-prep/'), pipeline.build.__file__; \
cv2.optflow.DualTVL1OpticalFlow_create(); print(imageio_ffmpeg.get_ffmpeg_exe(), deno.find_deno_bin())"

# The Beam SDK harness boot program must stay the entrypoint.
ENTRYPOINT ["/opt/apache/beam/boot"]
