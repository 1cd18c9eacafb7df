#!/usr/bin/env bash
# Install the Debian packages the demo corpus, evaluation sets and Spark need, when missing
# (usage: install_system_packages.sh [--browser]).
# Idempotent: does nothing when all are present. apt needs root or passwordless sudo.
set -euo pipefail

PACKAGES=(
  openclipart-svg          # demo corpus: public-domain clip art with titles and keywords
  fonts-noto-color-emoji   # held-out emoji art style (evaluation)
  unicode-data             # emoji names and CLDR groups (emoji-test.txt)
  dataset-fashion-mnist    # evaluation: zero-shot / linear probe
  tuxpaint-stamps-default  # evaluation: caption retrieval
  libcairo2                # cairosvg renders the SVGs with it
)
command -v java >/dev/null 2>&1 || PACKAGES+=(openjdk-17-jre-headless)  # Spark runs on the JVM
# --browser (make test): headless Chromium and its WebDriver, for the explorer's browser test
if [ "${1:-}" = "--browser" ]; then
  PACKAGES+=(chromium chromium-driver)
fi

missing=()
for pkg in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  SUDO="sudo -n"
else
  echo "error: these Debian packages are missing: ${missing[*]}" >&2
  echo "Installing them needs root or passwordless sudo. Run as root:" >&2
  echo "  apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing Debian packages: ${missing[*]}"
$SUDO apt-get update -q
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
