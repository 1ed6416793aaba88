#!/usr/bin/env bash
# Build the site, serve it on 127.0.0.1 and take headless-Chromium screenshots of a few pages,
# to check by eye that it renders offline (math typeset by the site's own MathJax, no raw TeX).
#
#   bash docs/screenshots.sh [OUT_DIR]        (default docs/screenshots; needs Debian `chromium`)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-docs/screenshots}"
port="${PORT:-8765}"
site="$(mktemp -d)"
mkdir -p "$out"
out="$(cd "$out" && pwd)"

mkdocs build --strict --site-dir "$site" 2>&1 | grep -v '^INFO' || true
python -m http.server "$port" --bind 127.0.0.1 --directory "$site" >/dev/null 2>&1 &
server=$!
trap 'kill "$server"; rm -rf "$site"' EXIT
sleep 1

# page path (under the site) and screenshot name
pages=(
    "index.html home"
    "estimators/index.html estimators"
    "phylo/index.html phylo"
    "${GALLERY_PAGE:-generated/gallery/getting_started/index.html} gallery"
)
for entry in "${pages[@]}"; do
    read -r page name <<<"$entry"
    chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run \
        --window-size=1280,1800 --virtual-time-budget=15000 \
        --screenshot="$out/$name.png" "http://127.0.0.1:$port/$page" 2>/dev/null
    echo "$out/$name.png  <- http://127.0.0.1:$port/$page"
done
