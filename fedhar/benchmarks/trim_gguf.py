"""Write a GGUF holding only the first N transformer blocks of a llama GGUF (quantized bytes copied as-is).

Why: a GPU machine without network access can then receive the exact SmolLM2 weights for a
sweep in a few tens of MB; transformers dequantizes them there exactly as it does here.

    python -m fedhar.benchmarks.trim_gguf SOURCE.gguf OUT.gguf --blocks 12
"""

from __future__ import annotations

import argparse

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def trim(source: str, out: str, blocks: int) -> None:
    reader = GGUFReader(source)
    arch = reader.fields["general.architecture"]
    arch_name = bytes(arch.parts[arch.data[0]]).decode()
    writer = GGUFWriter(out, arch_name)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vtype = field.types[0]
        if name == f"{arch_name}.block_count":
            writer.add_uint32(name, blocks)
        elif vtype == GGUFValueType.ARRAY:
            sub = field.types[1]
            if sub == GGUFValueType.STRING:
                value = [bytes(field.parts[i]).decode("utf-8", errors="surrogateescape") for i in field.data]
            else:
                value = [field.parts[i].tolist()[0] for i in field.data]
            writer.add_array(name, value)
        elif vtype == GGUFValueType.STRING:
            writer.add_string(name, bytes(field.parts[field.data[0]]).decode())
        else:
            writer.add_key_value(name, field.parts[field.data[0]].tolist()[0], vtype)
    for t in reader.tensors:
        if t.name.startswith("blk."):
            if int(t.name.split(".")[1]) >= blocks:
                continue
        elif t.name == "token_embd.weight":
            continue  # unused with inputs_embeds; the largest tensor of the file
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source")
    p.add_argument("out")
    p.add_argument("--blocks", type=int, required=True)
    a = p.parse_args()
    trim(a.source, a.out, a.blocks)
