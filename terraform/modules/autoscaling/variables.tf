variable "enabled" {
  description = "Register the variant; only once the endpoint exists (Application Auto Scaling validates the resource)."
  type        = bool
}

variable "endpoint_name" {
  description = "The endpoint."
  type        = string
}

variable "variant_name" {
  description = "The stable production variant."
  type        = string
}

variable "min_instances" {
  description = "Fewest instances."
  type        = number
}

variable "max_instances" {
  description = "Most instances."
  type        = number
}

variable "target_invocations" {
  description = "Target of SageMakerVariantInvocationsPerInstance (per instance per minute)."
  type        = number
}

variable "scale_out_cooldown_seconds" {
  description = "Seconds between scale-outs."
  type        = number
}

variable "scale_in_cooldown_seconds" {
  description = "Seconds between scale-ins."
  type        = number
}
