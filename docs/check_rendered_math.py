"""Check that the built documentation typesets its math offline, in a real browser.

Run after ``bash scripts/docs.sh`` (CI runs it from ``.ci/run``)::

    python3 docs/check_rendered_math.py                      # concepts.html
    python3 docs/check_rendered_math.py index.html howto/custom_constraints.html

Two checks, standard library only:

1. **Local assets.** Every built page with math loads MathJax, and every other script and
   stylesheet, from the site itself: no ``http(s)://`` or ``//`` URL in a ``<script src>`` or a
   stylesheet ``<link href>``, and the MathJax script it names exists under ``_static/``.
2. **Typeset in Chromium.** Each page given (default ``concepts.html``) is opened from disk
   (``file://``) in headless Chromium with every host name unresolvable, so nothing can come
   from the network, and the DOM is read back after the scripts ran (``--dump-dom`` with a
   virtual-time budget). The rendered text, outside ``<pre>``/``<code>``/``<script>``, must hold
   no raw ``\\(`` or ``\\[`` (MathJax replaced them all), each math element must hold a
   ``<mjx-container>``, and none may hold a MathJax error (``<mjx-merror>``).

Chromium is Debian's (``apt-get install chromium``; ``$CHROMIUM`` overrides the path). Without
it, check 2 is skipped with a message, except under ``--require-chromium`` or when ``$CI`` is set
(CI), where a missing browser is a failure. The exit status is 0 only if every check passed.
"""

from __future__ import annotations

import argparse
import html.parser
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

DOCS = Path(__file__).resolve().parent
DEFAULT_HTML_DIR = DOCS / "_build" / "html"
DEFAULT_PAGES = ("concepts.html",)
RAW_TEX = re.compile(r"\\[(\[]")  # \( or \[ : MathJax's delimiters as Sphinx writes them
REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--host-resolver-rules=MAP * ~NOTFOUND",  # no host resolves: the page must be self-contained
    "--virtual-time-budget=15000",  # lets MathJax finish before the DOM is dumped
    "--dump-dom",
)
VOID_TAGS = frozenset("area base br col embed hr img input link meta source track wbr".split())
SKIPPED_TAGS = frozenset({"script", "style", "pre", "code", "textarea", "noscript"})


class PageScan(html.parser.HTMLParser):
    """Collects a page's asset URLs, math elements, MathJax output and visible text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.scripts: list[str] = []
        self.stylesheets: list[str] = []
        self.math_elements = 0  # Sphinx's <span/div class="math ...">
        self.math_typeset = 0  # of those, how many hold a <mjx-container>
        self.containers = 0
        self.errors = 0  # <mjx-merror>: TeX MathJax could not typeset
        self.text: list[str] = []
        self._skip = 0
        self._math_depth: list[int] = []  # open math elements: [depth, ...]
        self._math_has_container: list[bool] = []
        self._depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = {name: value or "" for name, value in attrs}
        if tag == "script" and attributes.get("src"):
            self.scripts.append(attributes["src"])
        if tag == "link" and "stylesheet" in attributes.get("rel", "").split():
            self.stylesheets.append(attributes.get("href", ""))
        if tag == "mjx-container":
            self.containers += 1
            if self._math_has_container:
                self._math_has_container[-1] = True
        if tag == "mjx-merror":
            self.errors += 1
        if tag in VOID_TAGS:
            return
        self._depth += 1
        if tag in SKIPPED_TAGS:
            self._skip += 1
        if tag in ("span", "div") and "math" in attributes.get("class", "").split():
            self.math_elements += 1
            self._math_depth.append(self._depth)
            self._math_has_container.append(False)

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        if self._math_depth and self._math_depth[-1] == self._depth:
            self._math_depth.pop()
            self.math_typeset += self._math_has_container.pop()
        if tag in SKIPPED_TAGS and self._skip:
            self._skip -= 1
        self._depth -= 1

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.text.append(data)


def scan(markup: str) -> PageScan:
    parser = PageScan()
    parser.feed(markup)
    parser.close()
    return parser


def check_local_assets(html_dir: Path) -> list[str]:
    """Problems with the assets of the built pages that contain math."""
    problems = []
    pages_with_math = 0
    for page in sorted(html_dir.rglob("*.html")):
        markup = page.read_text(encoding="utf-8")
        if 'class="math' not in markup:
            continue
        pages_with_math += 1
        found = scan(markup)
        name = page.relative_to(html_dir)
        remote = [url for url in found.scripts + found.stylesheets if REMOTE.match(url)]
        if remote:
            problems.append(f"{name}: loads {', '.join(remote)} from the network")
        mathjax = [url for url in found.scripts if "mathjax" in url.lower()]
        if not mathjax:
            problems.append(f"{name}: has math but no MathJax script")
        for url in mathjax:
            if not REMOTE.match(url) and not (page.parent / url.split("?")[0]).is_file():
                problems.append(f"{name}: MathJax script {url} is not in the build")
    if not pages_with_math:
        problems.append(f"no page with math under {html_dir}: is the site built?")
    return problems


def find_chromium() -> str | None:
    override = os.environ.get("CHROMIUM")
    if override:
        return override if shutil.which(override) else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


def render(chromium: str, page: Path, timeout: float) -> str:
    """The DOM of the page after its scripts ran."""
    with tempfile.TemporaryDirectory(prefix="conopt-chromium-") as profile:
        command = [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()]
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, check=False
        )
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited with {result.returncode}:\n{result.stderr[-2000:]}")
    return result.stdout


def check_typeset(chromium: str, page: Path, name: str, timeout: float) -> list[str]:
    """Problems in the rendered DOM of one page (``name``: how messages call it)."""
    try:
        dom = render(chromium, page, timeout)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        return [f"{name}: {error}"]
    found = scan(dom)
    text = " ".join(found.text)
    problems = []
    if found.math_elements == 0:
        problems.append(f"{name}: no math element in the rendered page (empty DOM?)")
    raw = sorted({match.group(0) for match in RAW_TEX.finditer(text)})
    if raw:
        snippet = text[RAW_TEX.search(text).start() :][:80].replace("\n", " ")
        problems.append(f"{name}: raw TeX ({' '.join(raw)}) left in the text: {snippet!r}")
    if found.math_typeset < found.math_elements:
        problems.append(
            f"{name}: {found.math_elements - found.math_typeset} of "
            f"{found.math_elements} math elements not typeset by MathJax"
        )
    if found.errors:
        problems.append(f"{name}: {found.errors} MathJax error(s) (<mjx-merror>)")
    if not problems:
        print(
            f"ok   {name}: {found.math_typeset}/{found.math_elements} math elements "
            f"typeset ({found.containers} <mjx-container>), no raw \\( or \\["
        )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "pages",
        nargs="*",
        default=list(DEFAULT_PAGES),
        help="pages relative to the HTML folder (default: concepts.html)",
    )
    parser.add_argument("--html-dir", type=Path, default=DEFAULT_HTML_DIR)
    parser.add_argument(
        "--require-chromium",
        action="store_true",
        help="fail, not skip, without Chromium (implied when $CI is set)",
    )
    parser.add_argument("--timeout", type=float, default=90.0, help="seconds per page")
    args = parser.parse_args(argv)
    args.html_dir = args.html_dir.resolve()
    require = args.require_chromium or bool(os.environ.get("CI"))

    passed = failed = skipped = 0
    problems = check_local_assets(args.html_dir)
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        failed += 1
    else:
        print("ok   every page with math loads MathJax and its other assets from the site")
        passed += 1

    chromium = find_chromium()
    if chromium is None:
        message = "Chromium not found (apt-get install chromium, or set $CHROMIUM)"
        if require:
            print(f"FAIL {message}: required here (--require-chromium or $CI)")
            failed += len(args.pages)
        else:
            print(f"SKIP {message}: the in-browser check of {', '.join(args.pages)} did not run")
            skipped += len(args.pages)
    else:
        for name in args.pages:
            page = args.html_dir / name
            if not page.is_file():
                page_problems = [f"{name}: not found under {args.html_dir}"]
            else:
                page_problems = check_typeset(chromium, page, name, args.timeout)
            for problem in page_problems:
                print(f"FAIL {problem}")
            failed += bool(page_problems)
            passed += not page_problems

    summary = f"check_rendered_math: {passed} passed, {failed} failed"
    print(summary + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
