// moe_compact: for a mul_mat_id split over several stacks (the expert pool's
// arenas, one matmul op each), the entries of the batch whose matrix is in
// each stack, and the indirect dispatch arguments of each stack's one-entry
// matvec ops, so that every stack's workgroups are exactly its own entries.
// (Without the lists each stack's op walks every entry of the batch and the
// entries of other stacks return at once; on a CPU adapter such a
// workgroup still runs its straight-line code and one masked pass of each
// loop, a tenth to a fifth of a full one.)
//
// Entry e = t * n_used + s names matrix ids[t, s]; it belongs to stack a
// when stacks[a].x <= id < stacks[a].x + stacks[a].y. Outputs:
//   lists[a * region + 0]        entries of stack a (count)
//   lists[a * region + 1 + i]    its i-th entry (order not fixed; each
//                                entry's products do not depend on it)
//   args[(a * n_args + j) * 3 + 1] = the count, for j < n_args: the y of
//                                consumer j's [x, y, z] arguments (x and z
//                                are written once by the consumer)
//
// Bindings (inputs -> outputs -> params):
//   @binding(0) ids:    array<u32>         [T, ids_stride] matrix ids   read_write*
//   @binding(1) step:   array<u32>         the step buffer; [1] = T     read
//   @binding(2) stacks: array<vec2u>       (id_base, n_mats) per stack  read
//   @binding(3) lists:  array<atomic<u32>> the lists above              read_write
//   @binding(4) args:   array<u32>         indirect arguments           read_write
//   @binding(5) params: Params below                                    read
//   * never written; read_write so ids may share a buffer with outputs.
//
// Dispatch: 1 workgroup.

struct Params {
  n_stacks: u32,
  n_used: u32,
  ids_off: u32,
  ids_stride: u32,
  region: u32, //  words of a stack's list (1 + the most entries)
  n_args: u32, //  consumers per stack
}

override WG: u32 = 64;

@group(0) @binding(0) var<storage, read_write> ids: array<u32>;
@group(0) @binding(1) var<storage, read> step: array<u32>;
@group(0) @binding(2) var<storage, read> stacks: array<vec2u>;
@group(0) @binding(3) var<storage, read_write> lists: array<atomic<u32>>;
@group(0) @binding(4) var<storage, read_write> args: array<u32>;
@group(0) @binding(5) var<storage, read> params: Params;

@compute @workgroup_size(WG)
fn compact(@builtin(local_invocation_index) lid: u32) {
  let n_e = step[1] * params.n_used;
  for (var a = lid; a < params.n_stacks; a += WG) {
    atomicStore(&lists[a * params.region], 0u);
  }
  storageBarrier();
  for (var e = lid; e < n_e; e += WG) {
    let t = e / params.n_used;
    let id = ids[params.ids_off + t * params.ids_stride + (e - t * params.n_used)];
    for (var a = 0u; a < params.n_stacks; a++) {
      let st = stacks[a];
      if (id - st.x < st.y) {
        let base = a * params.region;
        let i = atomicAdd(&lists[base], 1u);
        if (i + 1u < params.region) {
          atomicStore(&lists[base + 1u + i], e);
        }
        break;
      }
    }
  }
  storageBarrier();
  for (var a = lid; a < params.n_stacks; a += WG) {
    let n = min(atomicLoad(&lists[a * params.region]), params.region - 1u);
    for (var j = 0u; j < params.n_args; j++) {
      args[(a * params.n_args + j) * 3u + 1u] = n;
    }
  }
}
