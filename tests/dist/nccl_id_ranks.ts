/**
 * Run by tests/dist_test.ts under `mpirun -np N` where NCCL is found: rank
 * 0 makes the NCCL unique id (no GPU needed) and MPI broadcasts it, as a
 * run on GPUs does before `ncclCommInitRank`. Prints one JSON line per
 * rank with the id's bytes.
 */

import { sharedUniqueId } from "../../dist/nccl_comm.ts";
import { joinRanks } from "../../dist/parallel.ts";

const ranks = joinRanks(60);
if (ranks === null) throw new Error("nccl_id_ranks.ts runs under mpirun");
const id = sharedUniqueId(ranks.world);
console.log(JSON.stringify({ rank: ranks.rank, id: [...id] }));
ranks.finalize();
