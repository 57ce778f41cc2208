"""Clips to codes and back: `python -m runtime.tokens encode|decode ... --model DIR`.

encode reads a BVH, prepares it as training data was prepared (fps, rigid bones, the model's joints) and
writes a .tok.npz: the codes (uint16), the clip's length and start, and the tokenizer's fingerprint.
decode writes .bvh (any DCC) or .npz (features, world positions, local rotations, contacts) from one.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from .atomic import atomic_path
from .bvh import MocapError, read_bvh, write_bvh
from .cli import UsageError, check_input_file, check_output_file, fail, parse
from .model import ModelError
from .tokenizer import DecodedClip, TokenError, Tokenizer, Tokens, load_tokenizer, load_tokens, save_tokens

DECODE_FORMATS = (".bvh", ".npz")
EXAMPLES = """examples:
  python -m runtime.tokens encode walk.bvh --model models/walk                 # -> walk.tok.npz
  python -m runtime.tokens encode walk.bvh --model models/walk -o codes/walk.tok.npz
  python -m runtime.tokens decode walk.tok.npz --model models/walk -o walk_decoded.bvh
  python -m runtime.tokens decode walk.tok.npz --model models/walk -o walk_decoded.npz   # arrays
"""


def default_output(source: Path) -> Path:
    """clip.bvh -> clip.tok.npz beside it."""
    return source.with_name(source.stem + ".tok.npz")


def encode_file(source: Path, tok: Tokenizer, out: Path) -> Tokens:
    """Encode a BVH file and write its .tok.npz."""
    if source.suffix.lower() != ".bvh":
        raise UsageError(f"{source}: expected a .bvh file to encode")
    clip = read_bvh(source)
    try:
        tokens = tok.encode(clip)
    except TokenError as e:
        raise TokenError(f"{source}: {e}") from None
    save_tokens(out, tokens, tok.meta["name"])
    return tokens


def write_decoded(out: Path, clip: DecodedClip, tok: Tokenizer, tokens: Tokens) -> None:
    """Write a decoded clip as .bvh or .npz (atomically)."""
    if out.suffix.lower() == ".bvh":
        write_bvh(out, clip.motion(tok.skeleton, tok.fps, out.stem))
        return
    with atomic_path(out, suffix=".npz") as tmp:
        np.savez(tmp, fps=np.float64(tok.fps), skeleton=np.array(tok.skeleton.to_json()),
                 layout=np.array(tok.layout.to_json()), features=clip.features, root_positions=clip.root_positions,
                 local_rotations=clip.local_rotations, world_positions=clip.positions, contacts=clip.contacts,
                 codes=tokens.codes, tokenizer=np.array(json.dumps({"name": tok.meta["name"], "id": tok.id,
                                                                    "path": str(tok.path)})))


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(prog="python -m runtime.tokens", description=__doc__.split("\n")[0],
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    enc = sub.add_parser("encode", help="a .bvh clip -> .tok.npz codes", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    enc.add_argument("clip", help="the .bvh file to encode")
    enc.add_argument("-o", "--output", help="the .tok.npz to write (default: CLIP.tok.npz beside the clip)")
    dec = sub.add_parser("decode", help=".tok.npz codes -> a .bvh or .npz clip", epilog=EXAMPLES,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    dec.add_argument("tokens", help="the .tok.npz to decode")
    dec.add_argument("-o", "--output", required=True, help=f"the clip to write: {', '.join(DECODE_FORMATS)}")
    for parser in (enc, dec):
        parser.add_argument("--model", required=True, help="the model directory holding the tokenizer")
        parser.add_argument("--providers", default="cpu", choices=["cpu", "cuda", "auto"],
                            help="onnxruntime device: %(choices)s (default %(default)s)")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point: 0 on success, 2 on bad input (one line on stderr, nothing written)."""
    args = parse(build_parser(), argv)
    try:
        if args.command == "encode":
            source = check_input_file(args.clip, "BVH file")
            out = Path(args.output) if args.output else default_output(source)
            check_output_file(out, (".tok.npz",))
            tok = load_tokenizer(args.model, providers=args.providers)
            tokens = encode_file(source, tok, out)
        else:
            out = check_output_file(args.output, DECODE_FORMATS)
            tok = load_tokenizer(args.model, providers=args.providers)
            tokens = load_tokens(args.tokens)
            try:
                clip = tok.decode(tokens)
            except TokenError as e:
                raise TokenError(f"{args.tokens}: {e}") from None
            write_decoded(out, clip, tok, tokens)
    except (UsageError, MocapError, ModelError) as e:
        return fail(e)
    except OSError as e:
        return fail(f"{e.filename or args.output}: cannot write ({e.strerror or e})")
    n, fpt = len(tokens.codes), tokens.frames_per_token
    if args.command == "encode":
        if tokens.padded:
            print(f"note: {tokens.length} frames is not a multiple of {fpt}: padded with {tokens.padded} copy(ies) "
                  f"of the last frame to {n * fpt}; decoding trims back to {tokens.length}", file=sys.stderr)
        raw, packed = tokens.length * tok.layout.size * 4, n * (2 if tok.codes <= 2 ** 16 else 8)
        print(f"encoded {source}: {tokens.length} frames at {tok.fps:g} fps -> {n} codes of {fpt} frames -> {out} "
              f"({out.stat().st_size} bytes; codes {packed} bytes vs {raw} bytes of float32 features, "
              f"{raw / packed:.0f}x)")
    else:
        print(f"decoded {args.tokens}: {n} codes -> {tokens.length} frames at {tok.fps:g} fps -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
