"""robots.txt parsers side by side: Protego (what pipeline.robots_txt uses) and the standard
library's urllib.robotparser, on RFC 9309's matching rules (each case's answer is the
standard's), then the time to parse a typical file and to check a URL against it.

    python benchmarks/robots_txt_parsers.py
"""

from __future__ import annotations

import time
import urllib.robotparser

from protego import Protego

AGENT = "flip-pipeline"
# (robots.txt, path, allowed by RFC 9309 for AGENT, what the case shows)
CASES = [
    ("User-agent: *\nDisallow: /private/\n", "/private/a.jpg", False, "prefix rule"),
    ("User-agent: *\nDisallow: /private/\n", "/public/a.jpg", True, "no rule matches"),
    (
        "User-agent: *\nDisallow: /private/\nAllow: /private/ok/\n",
        "/private/ok/a.jpg",
        True,
        "longest match wins (allow listed after)",
    ),
    (
        "User-agent: *\nAllow: /private/ok/\nDisallow: /private/\n",
        "/private/ok/a.jpg",
        True,
        "longest match wins (allow listed first)",
    ),
    (
        "User-agent: *\nAllow: /img\nDisallow: /img/\n",
        "/img/a.jpg",
        False,
        "longest match wins: the shorter allow listed first loses",
    ),
    ("User-agent: *\nDisallow: /*.gif$\n", "/a/b.gif", False, "* wildcard and $ anchor"),
    ("User-agent: *\nDisallow: /*.gif$\n", "/a/b.gif?x=1", True, "$ anchors the query too"),
    ("User-agent: *\nDisallow: /*/thumbs/\n", "/u/1/thumbs/a.jpg", False, "* inside a path"),
    (
        "User-agent: *\nDisallow: /\n\nUser-agent: flip-pipeline\nAllow: /\n",
        "/a.jpg",
        True,
        "own group replaces *",
    ),
    (
        "User-agent: *\nDisallow: /\n\nUser-agent: FLIP-Pipeline\nDisallow: /x\n",
        "/a.jpg",
        True,
        "agent matched case-insensitively",
    ),
    (
        "User-agent: otherbot\nUser-agent: flip-pipeline\nDisallow: /a\n",
        "/a.jpg",
        False,
        "a group with several agents",
    ),
    ("User-agent: *\nDisallow: /caf%C3%A9\n", "/caf%C3%A9.jpg", False, "percent-encoded rule"),
    ("User-agent: *\nDisallow:\n", "/a.jpg", True, "empty disallow allows all"),
    (
        "User-agent: *\nDisallow: /a\nAllow: /a\n",
        "/a.jpg",
        True,
        "equal length: allow wins",
    ),
]


def protego_allows(text: str, path: str) -> bool:
    return Protego.parse(text).can_fetch(f"http://example.com{path}", AGENT)


def stdlib_allows(text: str, path: str) -> bool:
    parser = urllib.robotparser.RobotFileParser()
    parser.parse(text.splitlines())
    return parser.can_fetch(AGENT, f"http://example.com{path}")


def typical_file(groups: int = 10, rules: int = 15) -> str:
    """A few agents' groups of path rules (about 3 KB, a size many large sites publish)."""
    lines = []
    for g in range(groups):
        lines.append(f"User-agent: {'*' if g == groups - 1 else f'bot{g}'}")
        lines += [f"Disallow: /section{g}/{r}/*.php$" for r in range(rules)]
        lines.append("")
    return "\n".join(lines)


def timed(fn, repeats: int) -> float:
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parsers = {"protego": protego_allows, "urllib.robotparser": stdlib_allows}
    wrong = {name: [] for name in parsers}
    for text, path, expected, what in CASES:
        for name, allows in parsers.items():
            if allows(text, path) != expected:
                wrong[name].append(what)
    for name, cases in wrong.items():
        print(f"{name}: {len(CASES) - len(cases)}/{len(CASES)} right; wrong: {cases or 'none'}")

    text = typical_file()
    protego = Protego.parse(text)
    stdlib = urllib.robotparser.RobotFileParser()
    stdlib.parse(text.splitlines())
    url = "http://example.com/section9/3/a.jpg"
    rows = {
        "protego": (
            timed(lambda: Protego.parse(text), 200),
            timed(lambda: protego.can_fetch(url, AGENT), 2000),
        ),
        "urllib.robotparser": (
            timed(lambda: urllib.robotparser.RobotFileParser().parse(text.splitlines()), 200),
            timed(lambda: stdlib.can_fetch(AGENT, url), 2000),
        ),
    }
    print(f"\na {len(text)}-byte file ({text.count(chr(10))} lines):")
    for name, (parse_s, check_s) in rows.items():
        print(f"{name:>20}: parse {parse_s * 1e3:.2f} ms, check {check_s * 1e6:.1f} µs per URL")
    ratio = rows["protego"][1] / rows["urllib.robotparser"][1]
    print(f"protego's check / the standard library's: x{ratio:.2f}")


if __name__ == "__main__":
    main()
