"""The embedded default corpus: real, human-made images and captions from registry packages,
served over HTTP on loopback as a small "demo web" with a realistic share of broken URLs."""
