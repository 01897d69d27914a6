"""`maws-scale data build|merge|verify|vocab`: build Arrow shards (whole or in parts), merge parts, check them, and
build the hashtag vocabulary. Nothing here imports torch."""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

SOURCES = ("folder", "jsonl", "webdataset", "fashion-mnist", "emoji")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="build, verify and index Arrow data sets")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)

    build = actions.add_parser("build", help="build Arrow IPC shards + manifest.json (parallel, resumable)")
    build.add_argument("--source", choices=SOURCES, required=True)
    build.add_argument("--input", required=True, help="image folder, JSONL file, tar file/folder, or idx folder")
    build.add_argument("--output", required=True, help="dataset directory to create (or resume)")
    build.add_argument("--tags", help="folder source: TSV file 'relative/path<TAB>tag1,tag2' instead of class folders")
    build.add_argument("--shard-size", default="512MB", help="target bytes per shard, e.g. 256MB, 1GiB (512MB)")
    build.add_argument("--workers", type=int, default=1, help="parallel builder processes")
    build.add_argument("--split", choices=["train", "test"], default="train", help="fashion-mnist split")
    build.add_argument("--variant", choices=["mosaic", "single"], default="mosaic", help="fashion-mnist variant")
    build.add_argument("--noise", type=float, default=0.0, help="fashion-mnist: fraction of records with noisy tags")
    build.add_argument("--limit", type=int, help="fashion-mnist: number of records (default: the split's size)")
    build.add_argument("--seed", type=int, default=0, help="fashion-mnist: seed of tiles and noise")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    part = build.add_argument_group("partitioned builds (folder, jsonl, webdataset; see docs/data.md)")
    part.add_argument("--partitions", type=int, help="split the input into K parts (OUTPUT/part-IIIII-of-KKKKK)")
    part.add_argument("--partition", type=int, help="build only part I (0-based) here; resumable")
    where = part.add_mutually_exclusive_group()
    where.add_argument("--local", action="store_true", help="build all K parts through submitit's local executor")
    where.add_argument("--slurm", action="store_true", help="submit all K parts as a SLURM job array (submitit)")
    part.add_argument("--label-map", help="labels.json to use as the global class map (e.g. when appending input)")
    part.add_argument("--slurm-partition", help="SLURM partition")
    part.add_argument("--time-min", type=int, default=24 * 60, help="time limit per part, minutes")
    part.add_argument("--mem-gb", type=float, help="memory per part")
    part.add_argument("--no-wait", action="store_true", help="--slurm: submit and return (then `data merge`)")
    part.add_argument(
        "--dry-run", action="store_true", help="--slurm: print the job array's sbatch file, submit nothing"
    )
    build.add_argument(
        "--captions",
        action="store_true",
        help="image-text set: keep captions (folder: <stem>.txt/.json; jsonl: caption(s); webdataset: txt/json; "
        "fashion-mnist: from the tags; emoji: always)",
    )
    build.add_argument("--vendor", help="emoji: artwork vendor(s), e.g. google or apple,google,twitter")
    fmt = build.add_argument_group("image format (folder, jsonl, webdataset; see docs/data.md 'feeding the GPUs')")
    fmt.add_argument(
        "--resize",
        default="none",
        help="shorter:N | max:N (keep aspect) | square:N (centre square) | none (default: bytes as found); "
        "never upscales",
    )
    fmt.add_argument("--jpeg-quality", type=int, help="quality of resized JPEGs (default 90)")
    fmt.add_argument(
        "--encoding", choices=("encoded", "raw"), default="encoded", help="raw: uint8 HWC pixels (needs --resize)"
    )
    build.set_defaults(func=_build)

    merge = actions.add_parser("merge", help="write one manifest over the parts of partitioned builds")
    merge.add_argument("dir", help="dataset directory to write manifest.json into (holds the parts by default)")
    merge.add_argument("--parts", nargs="+", help="build directories or part directories (default: DIR)")
    merge.set_defaults(func=_merge)

    verify = actions.add_parser("verify", help="re-read every shard: checksums, schema, every image decoded")
    verify.add_argument("dir", help="dataset directory (holds manifest.json)")
    verify.add_argument("--json", action="store_true", help="print the report as JSON")
    verify.add_argument("--workers", type=int, default=1)
    verify.add_argument("--no-decode", action="store_true", help="skip decoding images (checksums and schema only)")
    verify.set_defaults(func=_verify)

    tok = actions.add_parser("tokenizer", help="train a BPE tokenizer on the captions; store it with the data set")
    tok.add_argument("dir", help="image-text dataset directory (built with --captions)")
    tok.add_argument("--vocab-size", type=int, default=4096, help="BPE vocabulary size (default 4096)")
    tok.add_argument("--context-length", type=int, default=32, help="tokens per caption incl. <bos>/<eos> (32)")
    tok.set_defaults(func=_tokenizer)

    vocab = actions.add_parser("vocab", help="count tags and write vocab.json (min count and/or top K)")
    vocab.add_argument("dir", help="dataset directory")
    vocab.add_argument("--min-count", type=int, help="keep tags seen in at least M records")
    vocab.add_argument("--top", type=int, help="keep the K most frequent tags")
    vocab.add_argument("--output", help="where to write (default DIR/vocab.json)")
    vocab.add_argument("--workers", type=int, default=1, help="processes counting parts (or shard chunks) in parallel")
    vocab.set_defaults(func=_vocab)


def _logging() -> None:
    logging.basicConfig(
        level=logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=Console(stderr=True, soft_wrap=True), show_path=False)],
    )


def _image_format(args: argparse.Namespace):
    """The --resize/--jpeg-quality/--encoding format (ValueError naming the option)."""
    from maws_scale.data.transcode import ImageFormat

    image = ImageFormat(args.resize, args.jpeg_quality, args.encoding)
    if not image.is_default and args.source in ("fashion-mnist", "emoji"):
        raise ValueError(f"--resize/--encoding: the {args.source} source makes its own images; use folder, jsonl "
                         "or webdataset")  # fmt: skip
    return image


def _source(args: argparse.Namespace):
    from maws_scale.data import sources
    from maws_scale.data.fashion_mnist import FashionMNISTSource

    image = _image_format(args)
    if args.source == "fashion-mnist":
        return FashionMNISTSource(
            args.input, args.split, args.variant, args.noise, args.limit, args.seed, captions=args.captions
        )
    if args.source == "emoji":
        from maws_scale.data.emoji import EmojiSource

        if not args.vendor:
            raise ValueError("--vendor: the emoji source needs one of apple, google, twitter, facebook")
        return EmojiSource(args.input, args.vendor)
    if args.source == "folder":
        return sources.FolderSource(args.input, args.tags, captions=args.captions, image=image)
    if args.source == "jsonl":
        return sources.JsonlSource(args.input, captions=args.captions, image=image)
    return sources.WebDatasetSource(args.input, captions=args.captions, image=image)


def _build(args: argparse.Namespace) -> int:
    from maws_scale.data.build import build_dataset, parse_size
    from maws_scale.data.shards import DatasetError

    _logging()
    err = Console(stderr=True, soft_wrap=True)
    try:
        _image_format(args)
    except ValueError as error:  # bad usage: refused before anything is read or written
        err.print(f"[bold red]error:[/] {error}", highlight=False)
        return 2
    try:
        if args.partitions is not None or args.partition is not None or args.local or args.slurm:
            return _build_parts(args, err)
        source = _source(args)
        manifest = build_dataset(source, args.output, parse_size(args.shard_size), args.workers, not args.quiet)
    except (ValueError, DatasetError) as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False)
        return 1
    skipped = manifest.build.get("skipped", {})
    err.print(
        f"[green]built[/] {args.output}: {manifest.records} records in {len(manifest.shards)} shards, "
        f"{manifest.bytes / 1e6:.1f} MB" + (f", skipped {skipped}" if skipped else ""),
        highlight=False,
    )
    return 0


def _build_parts(args: argparse.Namespace, err: Console) -> int:
    from maws_scale.data import partition as parts
    from maws_scale.data.build import parse_size
    from maws_scale.data.merge import merge_parts

    if args.partitions is None:
        raise ValueError("--partition, --local and --slurm need --partitions K")
    source, size = _source(args), parse_size(args.shard_size)
    if args.partition is not None:
        if args.local or args.slurm:
            raise ValueError("--partition I builds one part here; --local/--slurm build all of them")
        summary = parts.build_part(
            source,
            args.output,
            parts.Partition(args.partition, args.partitions),
            size,
            args.workers,
            not args.quiet,
            args.label_map,
        )
        err.print(f"[green]built[/] {args.output}/{summary['part']}: {summary['records']} records", highlight=False)
        return 0
    if not (args.local or args.slurm):
        raise ValueError("--partitions K needs --partition I (one part here), --local or --slurm (all parts)")
    options = parts.ClusterOptions(
        cluster="slurm" if args.slurm else "local",
        partition=args.slurm_partition,
        time_min=args.time_min,
        cpus_per_task=max(1, args.workers),
        mem_gb=args.mem_gb,
    )
    if args.dry_run:
        if not args.slurm:
            raise ValueError("--dry-run goes with --slurm")
        print(parts.sbatch_script(parts.make_executor(options, args.output, offline=True), args.partitions))
        return 0
    executor = parts.make_executor(options, args.output)
    jobs = parts.submit_parts(source, args.output, args.partitions, executor, size, args.workers, args.label_map)
    err.print(f"submitted {len(jobs)} of {args.partitions} parts ({args.partitions - len(jobs)} already built)")
    if args.slurm and args.no_wait:
        err.print(f"job {jobs[0][1].job_id.split('_')[0] if jobs else '-'}; then `maws-scale data merge {args.output}`")
        return 0
    failed = parts.wait_parts(jobs)
    for name, reason in failed.items():
        err.print(f"[bold red]part failed:[/] {name}: {reason}", highlight=False)
    if failed:
        err.print("re-run the same command: finished parts are kept, unfinished ones resume", highlight=False)
        return 1
    manifest = merge_parts(args.output)
    err.print(
        f"[green]built[/] {args.output}: {manifest.records} records in {len(manifest.shards)} shards over "
        f"{args.partitions} parts, {manifest.bytes / 1e6:.1f} MB",
        highlight=False,
    )
    return 0


def _merge(args: argparse.Namespace) -> int:
    from maws_scale.data.merge import merge_parts
    from maws_scale.data.shards import DatasetError

    err = Console(stderr=True, soft_wrap=True)
    try:
        manifest = merge_parts(args.dir, args.parts)
    except DatasetError as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False)
        return 1
    err.print(
        f"[green]merged[/] {len(manifest.build['merged'])} parts into {args.dir}: {manifest.records} records in "
        f"{len(manifest.shards)} shards",
        highlight=False,
    )
    return 0


def _verify(args: argparse.Namespace) -> int:
    from maws_scale.data.shards import DatasetError
    from maws_scale.data.verify import verify_dataset

    try:
        report = verify_dataset(args.dir, workers=args.workers, decode=not args.no_decode)
    except DatasetError as error:
        Console(stderr=True, soft_wrap=True).print(f"[bold red]error:[/] {error}", highlight=False)
        return 1
    if args.json:
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        table = Table(title=f"verify {args.dir}")
        for col in ("shard", "records", "bytes", "bad records", "problem"):
            table.add_column(col)
        for shard in report["per_shard"]:
            table.add_row(
                shard["file"],
                str(shard["records"]),
                str(shard["bytes"]),
                ", ".join(f"{k}={v}" for k, v in shard["bad"].items()) or "0",
                shard["problem"] or "",
            )
        console = Console()
        console.print(table)
        console.print(
            f"{'OK' if report['ok'] else 'FAILED'}: {report['records']} records, {report['bytes']} bytes, "
            f"bad records {report['bad_records'] or 0}",
            highlight=False,
        )
        for example in report["examples"]:
            console.print(f"  bad: {example}", highlight=False)
    return 0 if report["ok"] else 1


def _tokenizer(args: argparse.Namespace) -> int:
    from maws_scale.data.shards import DatasetError
    from maws_scale.data.text import train_tokenizer

    err = Console(stderr=True, soft_wrap=True)
    try:
        text = train_tokenizer(args.dir, args.vocab_size, args.context_length)
    except (ValueError, DatasetError) as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False)
        return 1
    err.print(
        f"[green]tokenizer[/] {args.dir}/{text['tokenizer']}: vocab {text['vocab_size']}, context "
        f"{text['context_length']}, trained on {text['captions']} captions",
        highlight=False,
    )
    return 0


def _vocab(args: argparse.Namespace) -> int:
    from maws_scale.data.labels import build_vocab
    from maws_scale.data.shards import DatasetError

    err = Console(stderr=True, soft_wrap=True)
    try:
        vocab, stats = build_vocab(args.dir, args.min_count, args.top, args.output, args.workers)
    except (ValueError, DatasetError) as error:
        err.print(f"[bold red]error:[/] {error}", highlight=False)
        return 1
    shown = ", ".join(f"{t}:{c}" for t, c in zip(vocab.tags[:10], vocab.counts[:10]))
    err.print(
        f"[green]vocab[/] {len(vocab)} tags (of {stats['tags_seen']} seen) over {stats['records']} records; "
        f"{stats['records_without_known_tag']} records have no known tag (skipped for WSP). Top: {shown}",
        highlight=False,
    )
    return 0
