variable "endpoint_name" {
  description = "Endpoint whose variant the alarms watch."
  type        = string
}

variable "variant_name" {
  description = "The stable production variant."
  type        = string
}

variable "max_error_rate" {
  description = "Share of invocations answered 5xx above which the error alarm fires."
  type        = number
}

variable "min_requests" {
  description = "Fewer invocations than this in a minute count as no breach."
  type        = number
}

variable "p99_latency_ms" {
  description = "p99 model latency, in milliseconds, above which the latency alarm fires."
  type        = number
}

variable "evaluation_periods" {
  description = "Consecutive one-minute breaches before an alarm fires."
  type        = number
}

variable "alarm_actions" {
  description = "ARNs notified when an alarm fires (e.g. an SNS topic); the rollback needs none."
  type        = list(string)
  default     = []
}

variable "drift_period_seconds" {
  description = "Period of the drift alarm: a report's Drift datapoint counts for this long (one day: a daily report)."
  type        = number
  default     = 86400
}
