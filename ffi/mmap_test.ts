import assert from "node:assert/strict";
import { FileReader, MappedFile, NativeError, openFile } from "./mmap.ts";

const GiB = 1024 ** 3;

// A deterministic PRNG so a failing range can be reproduced.
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function withTempDir(fn: (dir: string) => void | Promise<void>): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix: "od_moe_ffi_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

// Written and fsynced, so that nothing is dirty and the page cache can evict it.
async function writeRandomFile(path: string, size: number, seed: number): Promise<Uint8Array> {
  const next = rng(seed);
  const bytes = new Uint8Array(size);
  for (let i = 0; i < size; i++) bytes[i] = Math.floor(next() * 256);
  using file = await Deno.open(path, { write: true, create: true, truncate: true });
  for (let done = 0; done < size;) done += await file.write(bytes.subarray(done));
  await file.sync();
  return bytes;
}

// tmpfs and ramfs pages are the file itself: posix_fadvise cannot evict them.
async function canEvict(dir: string): Promise<boolean> {
  if (Deno.build.os !== "linux") return false;
  const real = await Deno.realPath(dir);
  let best = { point: "", type: "" };
  for (const line of (await Deno.readTextFile("/proc/mounts")).split("\n")) {
    const [, point, type] = line.split(" ");
    if (point === undefined || type === undefined) continue;
    const inside = real === point || real.startsWith(point.endsWith("/") ? point : point + "/");
    if (inside && point.length >= best.point.length) best = { point, type };
  }
  return best.type !== "tmpfs" && best.type !== "ramfs";
}

function randomRanges(size: number, count: number, seed: number): [number, number][] {
  const next = rng(seed);
  const ranges: [number, number][] = [[0, 0], [0, size], [size, 0], [size - 1, 1], [0, 1]];
  while (ranges.length < count) {
    const offset = Math.floor(next() * size);
    const length = Math.floor(next() * (size - offset + 1));
    ranges.push([offset, next() < 0.5 ? length : Math.min(length, 17)]);
  }
  return ranges;
}

Deno.test("MappedFile views equal the file bytes at random ranges", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/random.bin`;
    const size = 3 * 65536 + 4097; // not a page multiple: the last page is partial
    const bytes = await writeRandomFile(path, size, 1);
    using file = MappedFile.open(path);
    assert.equal(file.size, size);
    assert.equal(file.path, path);
    for (const [offset, length] of randomRanges(size, 300, 2)) {
      assert.deepEqual(
        file.view(offset, length),
        bytes.subarray(offset, offset + length),
        `[${offset}, +${length})`,
      );
    }
    assert.deepEqual(file.view(12345n, 10), bytes.subarray(12345, 12355));
    assert.deepEqual(file.read(7, 3), bytes.subarray(7, 10));
    assert.deepEqual(file.pread(size - 5000, new Uint8Array(5000)), bytes.subarray(size - 5000));
  });
});

Deno.test("MappedFile views see later writes to the file (a mapping, not a copy)", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/shared.bin`;
    await writeRandomFile(path, 8192, 3);
    using file = MappedFile.open(path);
    const view = file.view(5000, 4);
    using writer = await Deno.open(path, { write: true });
    await writer.seek(5000, Deno.SeekMode.Start);
    await writer.write(new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
    assert.deepEqual(view, new Uint8Array([0xde, 0xad, 0xbe, 0xef]));
  });
});

Deno.test("MappedFile handles an empty file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/empty.bin`;
    await Deno.writeFile(path, new Uint8Array(0));
    const file = MappedFile.open(path);
    assert.equal(file.size, 0);
    assert.equal(file.view(0, 0).length, 0);
    assert.throws(() => file.view(0, 1), RangeError);
    file.advise(0, 0, "willneed");
    file.dropPageCache();
    assert.equal(file.residentBytes(0, 0), 0);
    file.close();
    file.close();
  });
});

Deno.test("MappedFile rejects ranges outside the file, naming file, offset, length and size", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/small.bin`;
    await writeRandomFile(path, 1000, 4);
    using file = MappedFile.open(path);
    assert.throws(
      () => file.view(999, 2),
      (e: unknown) => {
        assert.ok(e instanceof RangeError);
        for (const part of [path, "offset 999", "length 2", "size 1000"]) {
          assert.ok(e.message.includes(part), e.message);
        }
        return true;
      },
    );
    assert.throws(() => file.view(1001, 0), RangeError);
    assert.throws(() => file.view(-1, 1), RangeError);
    assert.throws(() => file.view(1.5, 1), RangeError);
    assert.throws(() => file.view(0, -1), RangeError);
    assert.throws(() => file.view(2n ** 60n, 1), RangeError);
    assert.throws(() => file.advise(900, 200, "random"), RangeError);
    assert.throws(() => file.pread(999, new Uint8Array(2)), RangeError);
  });
});

Deno.test("MappedFile after close: methods throw, old views read as empty", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/closed.bin`;
    await writeRandomFile(path, 10000, 5);
    const file = MappedFile.open(path);
    const earlier = file.view(100, 50);
    assert.equal(earlier.length, 50);
    file.close();
    assert.ok(file.closed);
    file.close();
    // A view over unmapped memory would crash the process; it must be detached.
    assert.equal(earlier.length, 0);
    assert.equal(earlier[0], undefined);
    assert.throws(() => file.view(0, 1), (e: unknown) => {
      assert.ok(e instanceof Deno.errors.BadResource);
      assert.ok(e.message.includes(path) && e.message.includes("closed"), e.message);
      return true;
    });
    assert.throws(() => file.advise(0, 1, "normal"), Deno.errors.BadResource);
    assert.throws(() => file.dropPageCache(), Deno.errors.BadResource);
    assert.throws(() => file.pread(0, new Uint8Array(1)), Deno.errors.BadResource);
  });
});

Deno.test("MappedFile reads a sparse file past 4 GiB", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/sparse.bin`;
    const size = 4.5 * GiB;
    const marks: [number, Uint8Array][] = [
      [4 * GiB - 2, new Uint8Array([1, 2, 3, 4])], // straddles the 2^32 boundary
      [4 * GiB + 123_456_789, new TextEncoder().encode("past four gigabytes")],
      [size - 3, new Uint8Array([7, 8, 9])],
    ];
    {
      using f = await Deno.open(path, { write: true, create: true, truncate: true });
      await f.truncate(size);
      for (const [offset, bytes] of marks) {
        await f.seek(offset, Deno.SeekMode.Start);
        await f.write(bytes);
      }
    }
    const stat = await Deno.stat(path);
    assert.equal(stat.size, size);
    if (stat.blocks !== null) {
      assert.ok(stat.blocks * 512 < 1024 * 1024, "test file should be sparse");
    }

    using file = MappedFile.open(path);
    assert.equal(file.size, size);
    for (const [offset, bytes] of marks) {
      assert.deepEqual(file.view(offset, bytes.length), bytes);
      assert.deepEqual(file.view(BigInt(offset), bytes.length), bytes);
      assert.deepEqual(file.pread(offset, new Uint8Array(bytes.length)), bytes);
    }
    assert.deepEqual(file.view(4 * GiB + 1000, 8), new Uint8Array(8)); // a hole reads as zeros
    file.advise(4 * GiB + 123_456_789, 19, "willneed");
    assert.throws(() => file.view(size - 2, 3), RangeError);

    using reader = FileReader.open(path);
    const [offset, bytes] = marks[1]!;
    assert.deepEqual(await reader.read(BigInt(offset), bytes.length), bytes);
  });
});

Deno.test("MappedFile.dropPageCache keeps content and views valid, and evicts on Linux disks", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/cache.bin`;
    const size = 64 * 4096 + 100;
    const bytes = await writeRandomFile(path, size, 6);
    using file = MappedFile.open(path);
    const before = file.view(0, size);
    assert.deepEqual(before, bytes);
    assert.equal(file.residentBytes(0, size), size);
    file.dropPageCache();
    if (await canEvict(dir)) assert.equal(file.residentBytes(0, size), 0);
    assert.deepEqual(file.view(0, size), bytes);
    assert.deepEqual(before, bytes);
    assert.equal(file.residentBytes(0, size), size);

    file.dropPageCache();
    file.advise(4097, 3 * 4096, "willneed");
    for (const advice of ["normal", "random", "sequential", "dontneed"] as const) {
      file.advise(1, size - 1, advice);
    }
    assert.deepEqual(file.view(0, size), bytes);
  });
});

Deno.test("FileReader reads the same bytes as the file", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/reader.bin`;
    const size = 100_003;
    const bytes = await writeRandomFile(path, size, 7);
    using reader = FileReader.open(path);
    assert.equal(reader.size, size);
    const ranges = randomRanges(size, 100, 8);
    // Issued together: the queue must keep each seek with its own read.
    const results = await Promise.all(
      ranges.map(([offset, length]) => reader.read(offset, length)),
    );
    ranges.forEach(([offset, length], i) =>
      assert.deepEqual(results[i], bytes.subarray(offset, offset + length))
    );
    for (const [offset, length] of ranges.slice(0, 20)) {
      assert.deepEqual(reader.readSync(offset, length), bytes.subarray(offset, offset + length));
    }
    assert.throws(() => reader.readSync(size, 1), RangeError);
    await assert.rejects(async () => await reader.read(size - 1, 2), RangeError);
    reader.close();
    reader.close();
    assert.throws(() => reader.readSync(0, 1), Deno.errors.BadResource);

    const empty = `${dir}/empty.bin`;
    await Deno.writeFile(empty, new Uint8Array(0));
    using emptyReader = FileReader.open(empty);
    assert.equal(emptyReader.size, 0);
    assert.equal((await emptyReader.read(0, 0)).length, 0);
  });
});

Deno.test("openFile maps by default and reads through FsFile on request", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/open.bin`;
    const bytes = await writeRandomFile(path, 5000, 9);
    using mapped = openFile(path);
    assert.ok(mapped instanceof MappedFile);
    using read = openFile(path, { preferMmap: false });
    assert.ok(read instanceof FileReader);
    assert.deepEqual(await read.read(10, 20), await mapped.read(10, 20));
    assert.deepEqual(await read.read(10, 20), bytes.subarray(10, 30));
  });
});

Deno.test("a missing path or a directory gives an error naming it", async () => {
  await withTempDir((dir) => {
    const missing = `${dir}/no/such/model.gguf`;
    for (const open of [MappedFile.open, FileReader.open, openFile]) {
      assert.throws(() => open(missing), (e: unknown) => {
        assert.ok(e instanceof Deno.errors.NotFound, String(e));
        assert.ok(e.message.includes(missing), e.message);
        return true;
      });
    }
    assert.throws(() => MappedFile.open(missing), /No such file or directory \(ENOENT, errno 2\)/);
    assert.throws(() => MappedFile.open(dir), (e: unknown) => {
      assert.ok(e instanceof NativeError && e.code === "EISDIR", String(e));
      assert.ok(e.message.includes(dir) && e.message.includes("directory"), e.message);
      return true;
    });
    assert.throws(() => FileReader.open(dir), /not a regular file/);
  });
});

Deno.test("without --allow-ffi, openMapped says to add it and openFile falls back", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/noffi.bin`;
    await Deno.writeFile(path, new Uint8Array([5, 6, 7]));
    const script = `${dir}/probe.ts`;
    await Deno.writeTextFile(
      script,
      `import { FfiUnavailableError, FileReader, openFile, openMapped } from ${
        JSON.stringify(new URL("./mmap.ts", import.meta.url).href)
      };
      let error = "";
      try { openMapped(${JSON.stringify(path)}); } catch (e) {
        error = (e instanceof FfiUnavailableError ? "FfiUnavailableError: " : "other: ") + e.message;
      }
      const source = openFile(${JSON.stringify(path)});
      console.log(JSON.stringify({ error, fallback: source instanceof FileReader, bytes: [...await source.read(0, 3)] }));`,
    );
    const out = await new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        `--allow-read=${dir},${new URL(".", import.meta.url).pathname}`,
        script,
      ],
      stdout: "piped",
      stderr: "piped",
    }).output();
    const stderr = new TextDecoder().decode(out.stderr);
    assert.ok(out.success, stderr);
    const result = JSON.parse(new TextDecoder().decode(out.stdout));
    assert.ok(result.error.startsWith("FfiUnavailableError: "), result.error);
    assert.ok(result.error.includes("--allow-ffi"), result.error);
    assert.equal(result.fallback, true);
    assert.deepEqual(result.bytes, [5, 6, 7]);
  });
});
