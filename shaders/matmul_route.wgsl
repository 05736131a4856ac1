// matmul_route: groups the entries of a mul_mat_id batch by matrix, so that
// the tiled kernel of matmul.wgsl reads each matrix once per BN entries
// instead of once per entry. One workgroup; entry e = t * n_used + s names
// matrix ids[t, s] - id_base, entries outside [0, n_mats) are dropped.
//
// Output, the route buffer (u32 words):
//   [0]                      number of tiles
//   [1 .. 3]                 the tiles' indirect dispatch arguments [x, y, z]:
//                            y = number of tiles written here, x and z
//                            written once by the launcher
//   [4 .. 4 + n_mats)        entries per matrix (scratch)
//   [4 + n_mats .. + n_mats) fill cursor per matrix (scratch)
//   [sorted_off + i]         entry ids, grouped by matrix (order inside a
//                            group is not fixed; results do not depend on it)
//   [tiles_off + 2 i]        tile i: first index into sorted
//   [tiles_off + 2 i + 1]    tile i: matrix | (entries, at most BN) << 16
// Tiles number at most ceil(E / BN) + min(n_mats, E) for E = T * n_used.
//
// Overrides:
//   WG  invocations (default 256)
//   BN  entries per tile; must equal the tiled kernel's BN (default 32)
//
// Bindings (inputs -> outputs -> params):
//   @binding(0) ids:   array<u32>          [T, n_used] matrix ids   read_write*
//   @binding(1) step:  array<u32>          [1] = T                  read
//   @binding(2) route: array<atomic<u32>>  the table above          read_write
//   @binding(3) params: Params (shaders/lib/matmul_params.wgsl)  read
//   * never written; read_write so ids may share a buffer with outputs.
//
// Dispatch: 1 workgroup (0 when the batch takes the matvec path).

//#include matmul_params

override WG: u32 = 256;
override BN: u32 = 32;

const NONE = 0xffffffffu;

@group(0) @binding(0) var<storage, read_write> ids: array<u32>;
@group(0) @binding(1) var<storage, read> step: array<u32>;
@group(0) @binding(2) var<storage, read_write> route: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read> params: Params;

fn entry_mat(e: u32) -> u32 {
  let t = e / params.n_used;
  let m = ids[params.ids_off + t * params.ids_stride + (e - t * params.n_used)] - params.id_base;
  return select(NONE, m, m < params.n_mats);
}

@compute @workgroup_size(WG)
fn main(@builtin(local_invocation_index) lid: u32) {
  let n_e = step[1] * params.n_used;
  let counts = 4u;
  let cursor = 4u + params.n_mats;
  for (var m = lid; m < params.n_mats; m += WG) {
    atomicStore(&route[counts + m], 0u);
  }
  storageBarrier();
  for (var e = lid; e < n_e; e += WG) {
    let m = entry_mat(e);
    if (m != NONE) {
      atomicAdd(&route[counts + m], 1u);
    }
  }
  storageBarrier();
  if (lid == 0u) {
    var pos = 0u;
    var n_tiles = 0u;
    for (var m = 0u; m < params.n_mats; m++) {
      let c = atomicLoad(&route[counts + m]);
      atomicStore(&route[cursor + m], pos);
      for (var s = 0u; s < c; s += BN) {
        atomicStore(&route[params.tiles_off + 2u * n_tiles], pos + s);
        atomicStore(&route[params.tiles_off + 2u * n_tiles + 1u], m | (min(BN, c - s) << 16u));
        n_tiles++;
      }
      pos += c;
    }
    atomicStore(&route[0], n_tiles);
    atomicStore(&route[2], n_tiles);
  }
  storageBarrier();
  for (var e = lid; e < n_e; e += WG) {
    let m = entry_mat(e);
    if (m != NONE) {
      let i = atomicAdd(&route[cursor + m], 1u);
      atomicStore(&route[params.sorted_off + i], e);
    }
  }
}
