#!/usr/bin/env bash
# Fetches real speech with transcripts for the ifw benchmark: Debian's pocketsphinx-testdata package
# (five LibriVox clips of "Sense and Sensibility", 16 kHz mono WAV, with their transcripts). apt-get
# download needs no root and installs nothing; dpkg-deb -x unpacks the .deb into our cache folder.
# Prints the folder holding the clips and the "transcription" file; does nothing if it is already there.
set -euo pipefail
cache="${SMASHLIB_CACHE:-$HOME/.cache/smashlib}/speech/pocketsphinx-testdata"
clips="$cache/usr/share/pocketsphinx/test/data/librivox"
if [ ! -f "$clips/transcription" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  # apt warns when its sandbox user cannot write the download folder; the download still succeeds
  (cd "$work" && apt-get download pocketsphinx-testdata >/dev/null 2>&1) || {
    echo "apt-get download pocketsphinx-testdata failed: is this Debian/Ubuntu with apt sources reachable?" >&2
    exit 1
  }
  mkdir -p "$cache.partial"
  dpkg-deb -x "$work"/pocketsphinx-testdata_*.deb "$cache.partial"
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
fi
echo "$clips"
