// matmul_params: the params of matmul.wgsl and matmul_route.wgsl, one struct
// for both (the route kernel reads n_used, n_mats, id_base, ids_off,
// ids_stride, tiles_off and sorted_off). src/gpu/ops/matmul.ts writes it;
// dispatch checks that its layout matches this struct field by field.

struct Params {
  w_off: u32, //       bytes from the W binding's start to row 0 of matrix 0
  row_bytes: u32, //   bytes per row
  mat_stride: u32, //  bytes between stacked matrices
  n_rows: u32, //      rows (of this chunk)
  n_cols: u32, //      row length, elements
  n_used: u32, //      slots per token (1: plain matmul)
  n_mats: u32, //      matrices in the stack; 0: plain matmul, ids unused
  id_base: u32, //     id of matrix 0 of the stack
  ids_off: u32, //     ids: first element
  ids_stride: u32, //  ids: elements between tokens
  x_off: u32, //       X: first element
  x_stride: u32, //    X: elements between tokens
  x_slot: u32, //      X: elements between the slots of a token (0: shared x)
  y_off: u32, //       Y: first element, the chunk's first row included
  y_stride: u32, //    Y: elements between tokens
  y_slot: u32, //      Y: elements between the slots of a token
  accumulate: u32, //  1: y += W x, 0: y = W x
  tiles_off: u32, //   route: first word of the tile table (2 words a tile)
  sorted_off: u32, //  route: first word of the entries sorted by matrix
  list: u32, //        1: the one-entry kernels take their entries from a list
  //                   (route[0] entries at route[1 ..], written by moe_compact.wgsl),
  //                   dispatched indirectly; 0: entry = workgroup's index
}
