/**
 * The MEC method: the loss, the model with its EMA teacher, the schedules,
 * one training step, and the weighted kNN monitor of its embeddings.
 *
 * @module
 */

export {
  KNN_DEFAULTS,
  knnAccuracy,
  type KnnOptions,
  knnPredict,
  knnVote,
} from "./knn.ts";
export { logDetLoss, mecLoss, type MecLossOptions } from "./loss.ts";
export { MEC, type MecModelOptions, type MecOutputs } from "./model.ts";
export {
  cosineSchedule,
  lamdaInvSchedule,
  type MecConstants,
  mecConstants,
  type ScheduleShape,
  warmupSchedule,
} from "./schedules.ts";
export { mecStep, type StepResult, type StepSettings } from "./train.ts";
