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

# Keep the image's Beam: the pipeline is submitted with the same version.
RUN pip install --no-cache-dir . "apache-beam[gcp]==${BEAM_VERSION}" \
    && pip check \
    && python -c "import av, cv2, deno, imageio_ffmpeg, yt_dlp, pipeline.build; \
cv2.optflow.DualTVL1OpticalFlow_create(); print(imageio_ffmpeg.get_ffmpeg_exe(), deno.find_deno_bin())"

# The Beam SDK harness boot program must stay the entrypoint.
ENTRYPOINT ["/opt/apache/beam/boot"]
