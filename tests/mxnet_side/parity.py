"""The MXNet side of tests/test_mxnet_parity.py; runs in .venvs/mxnet (mxnet 1.9.1, numpy<1.24).

Reads the channels our converter wrote with MXNet's own reader, converts the
same .lst with MXNet's im2rec.py, writes records whose payloads hold the
RecordIO magic with MXNet's writer and reads ours, then reports everything as
JSON (and pixels as .npz) for the test to compare. Only MXNet here: nothing
of our package is imported.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys

import mxnet as mx
import numpy as np


def describe(header, image=None):
    label = header.label
    label = [float(x) for x in label] if isinstance(label, np.ndarray) else float(label)
    out = {"flag": int(header.flag), "label": label, "id": int(header.id), "id2": int(header.id2)}
    if image is not None:
        out["shape"] = list(image.shape)
    return out


def read_channel(idx, rec, pixels_path):
    reader = mx.recordio.MXIndexedRecordIO(idx, rec, "r")
    records, pixels = [], {}
    for key in reader.keys:
        raw = reader.read_idx(key)
        header, image = mx.recordio.unpack_img(raw, 1)
        records.append({"key": key, "sha256": hashlib.sha256(raw).hexdigest(), **describe(header, image)})
        pixels[str(key)] = image
    reader.close()
    np.savez(pixels_path, **pixels)
    sequential = mx.recordio.MXRecordIO(rec, "r")
    count = 0
    while sequential.read() is not None:
        count += 1
    sequential.close()
    return {"records": records, "sequential_count": count}


def run_im2rec(lst, images, work, workers):
    os.makedirs(work, exist_ok=True)
    prefix = os.path.join(work, "train")
    with open(lst) as source, open(prefix + ".lst", "w") as target:
        target.write(source.read())
    im2rec = os.path.join(os.path.dirname(mx.__file__), "tools", "im2rec.py")
    subprocess.run(
        [sys.executable, im2rec, prefix, images, "--resize", "256", "--quality", "95", "--num-thread", str(workers)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return prefix + ".idx", prefix + ".rec"


def magic_payloads():
    magic = np.uint32(0xCED7230A).tobytes()
    return [
        magic + b"abcd" + magic + b"xy" + magic + b"z",  # aligned at 0 and 8, unaligned at 14
        b"",
        b"ab" + magic + b"cd",  # unaligned only
        magic,  # nothing but the magic
        b"12345678" + magic + magic,  # two in a row, at the end
        mx.recordio.pack(mx.recordio.IRHeader(0, [1.5, -2.0, 3.25], 42, 7), magic + b"payload"),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ours", required=True, help="our channel directory")
    parser.add_argument("--lst", required=True, help="the .lst to convert with im2rec")
    parser.add_argument("--images", required=True)
    parser.add_argument("--magic-ours", required=True, help="prefix of .idx/.rec we wrote with magic payloads")
    parser.add_argument("--work", required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    report = {"mxnet": mx.__version__, "ours": {}}
    for split in ("train", "validation"):
        base = os.path.join(args.ours, split, split)
        report["ours"][split] = read_channel(base + ".idx", base + ".rec", os.path.join(args.work, f"ours_{split}.npz"))

    idx, rec = run_im2rec(args.lst, args.images, os.path.join(args.work, "im2rec"), args.workers)
    report["im2rec"] = {"idx": idx, "rec": rec, **read_channel(idx, rec, os.path.join(args.work, "im2rec.npz"))}

    writer = mx.recordio.MXIndexedRecordIO(
        os.path.join(args.work, "magic_mx.idx"), os.path.join(args.work, "magic_mx.rec"), "w"
    )
    for key, payload in enumerate(magic_payloads()):
        writer.write_idx(key * 10, payload)
    writer.close()
    report["magic_mx"] = {"payloads": [p.hex() for p in magic_payloads()], "keys": [k * 10 for k in range(6)]}

    reader = mx.recordio.MXIndexedRecordIO(args.magic_ours + ".idx", args.magic_ours + ".rec", "r")
    report["magic_ours"] = {str(key): reader.read_idx(key).hex() for key in reader.keys}
    header, _ = mx.recordio.unpack(reader.read_idx(reader.keys[-1]))
    report["magic_ours_last_header"] = describe(header)
    reader.close()

    with open(os.path.join(args.work, "report.json"), "w") as handle:
        json.dump(report, handle)


if __name__ == "__main__":
    main()
